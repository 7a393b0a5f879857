"""The evaluate stage on the tiny model: batched inference equals one-at-a-time, label
scoring through the cache equals full forwards, every task type runs end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import engine
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.run import Examples, detect_task, evaluate, pick_shots, with_shots
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train.config import TrainConfig
from tuneforge.train.run import train

LABELS = ["billing", "technical", "account", "other"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict:
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def tickets(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval")
    rows = [chat(f"ticket {i}: problem {i % 4} with my thing", label, "Classify the ticket.")
            for i, label in enumerate(LABELS * 15)]
    prepare(PrepareConfig(inputs=[write_jsonl(folder / "t.jsonl", rows)], out=folder / "data", model=tiny_model,
                          memorisation_check=False))
    return folder / "data"


def prompts_of(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for t in texts]


def test_batched_generation_equals_one_at_a_time(tiny_model):
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    prompts = prompts_of(tokenizer, ["hi", "the app crashes on login every time", "refund please", "ok"])
    batched = engine.generate(model, tokenizer, prompts, 6, batch_size=4)
    single = [engine.generate(model, tokenizer, [p], 6, batch_size=1).texts[0] for p in prompts]
    assert batched.texts == single
    assert batched.new_tokens > 0


def test_label_scores_through_the_cache_equal_full_forwards(tiny_model):
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    prompts = prompts_of(tokenizer, ["charged twice", "cannot log in to my account at all", "thanks"])
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in LABELS]
    table = engine.score_options(model, prompts, options, tokenizer.pad_token_id, batch_size=3)
    for j, option in enumerate(options):
        direct = engine.answer_logprobs(model, prompts, [option] * len(prompts), tokenizer.pad_token_id)
        assert torch.allclose(table[:, j], torch.tensor([lp for lp, _ in direct]), atol=1e-4)


def test_shots_are_stratified_and_placed_after_the_system_prompt():
    train_rows = [chat(f"q{i}", LABELS[i % 4]) for i in range(40)]
    ex = Examples("classification", [], [], LABELS, train_rows)
    shots = pick_shots(ex, 4, seed=0)
    assert sorted(answer for _, answer in shots) == sorted(LABELS)
    assert pick_shots(ex, 4, seed=0) == shots
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    built = with_shots(prompt, shots[:2])
    assert [m["role"] for m in built] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert built[-1]["content"] == "Q"


def test_task_detection():
    assert detect_task(['{"a": 1}', '{"b": "x"}']) == "extraction"
    assert detect_task(["SELECT 1", "select name from t"]) == "sql"
    assert detect_task(["yes", "no", "yes", "no"]) == "classification"
    assert detect_task(["a long free answer one", "another different answer"]) == "generation"


def test_classification_end_to_end_with_an_adapter(tiny_model, tickets, tmp_path):
    train(TrainConfig(model=tiny_model, data=tickets, out=tmp_path / "run", max_steps=3, epochs=1, tracking=[]),
          progress=False)
    cfg = EvalConfig(data=tickets, model=tiny_model, adapters={"tuned": tmp_path / "run"}, out=tmp_path / "eval",
                     shots=4, general=True, latency_samples=2)
    result = evaluate(cfg, progress=False)
    assert result["task"] == "classification" and result["main_metric"] == "accuracy"
    assert list(result["variants"]) == ["base-zero-shot", "base-few-shot", "tuned"]
    for metrics in result["variants"].values():
        for key in ("accuracy", "macro_f1", "invalid_rate", "accuracy_constrained", "perplexity",
                    "latency_ms_p50", "tokens_per_s"):
            assert key in metrics, key
        assert 0 <= metrics["accuracy"] <= 1 and metrics["perplexity"] > 1
    assert set(result["general"]) == set(result["variants"])
    assert (tmp_path / "eval" / "report.html").exists() and (tmp_path / "eval" / "report.md").exists()
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["n"] == result["n"] == len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())


def test_extraction_generation_and_sql_files(tiny_model, tmp_path):
    extraction = write_jsonl(tmp_path / "x.jsonl", [chat(f"book for {i} people", json.dumps({"people": str(i)}))
                                                    for i in range(1, 5)])
    result = evaluate(EvalConfig(data=extraction, model=tiny_model, baselines=["zero-shot"], out=tmp_path / "x",
                                 latency_samples=0), progress=False)
    assert result["task"] == "extraction" and "field_f1" in result["variants"]["base-zero-shot"]

    generation = write_jsonl(tmp_path / "g.jsonl", [chat(f"say something {i}", f"a free answer number {i} here")
                                                    for i in range(4)])
    result = evaluate(EvalConfig(data=generation, model=tiny_model, baselines=["zero-shot"], out=tmp_path / "g",
                                 latency_samples=0), progress=False)
    assert result["task"] == "generation" and "rouge_l" in result["variants"]["base-zero-shot"]

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table users (id integer, name text)")
        conn.execute("insert into users values (1, 'ann'), (2, 'bob')")
    queries = write_jsonl(tmp_path / "q.jsonl", [chat("all users", "SELECT * FROM users"),
                                                 chat("user names", "SELECT name FROM users")])
    with pytest.raises(TuneforgeError) as caught:
        evaluate(EvalConfig(data=queries, model=tiny_model, baselines=["zero-shot"], out=tmp_path / "q"),
                 progress=False)
    assert caught.value.problems[0].code == "sql_db_missing"
    result = evaluate(EvalConfig(data=queries, model=tiny_model, baselines=["zero-shot"], out=tmp_path / "q",
                                 sql_db=db, latency_samples=0), progress=False)
    assert result["task"] == "sql" and result["variants"]["base-zero-shot"]["exec_accuracy"] == 0.0
