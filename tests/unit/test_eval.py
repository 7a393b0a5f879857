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
from tuneforge import tasks
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import engine
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.examples import load_examples, sample
from tuneforge.evaluate.run import ALL_METRICS, Examples, Variant, evaluate, metric_names, pick_shots, with_shots
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


def test_label_scores_in_several_option_groups_equal_one_group(tiny_model, monkeypatch):
    """Options past OPTION_TOKENS_PER_PASS go through in more passes over the same prompt cache."""
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    prompts = prompts_of(tokenizer, ["charged twice", "cannot log in to my account at all", "thanks"])
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in LABELS]
    whole = engine.score_options(model, prompts, options, tokenizer.pad_token_id, batch_size=2)
    monkeypatch.setattr(engine, "OPTION_TOKENS_PER_PASS", 2)
    assert len(engine._option_groups(options)) > 2
    torch.testing.assert_close(engine.score_options(model, prompts, options, tokenizer.pad_token_id, batch_size=2),
                               whole, atol=1e-4, rtol=0)


def system_prompts(tokenizer) -> list[list[int]]:
    """Four ticket prompts that share a system prompt longer than SharedPrefix.MIN_TOKENS."""
    system = "You sort support tickets into billing, technical, account or other. Answer with the label only."
    return [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": t}],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for t in ["charged twice", "the app crashes on login every time", "thanks", "refund please now"]]


def test_a_shared_prefix_computed_once_gives_what_full_prompts_give(tiny_model):
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    prompts = system_prompts(tokenizer)
    prefix = engine.SharedPrefix.of(model, prompts)
    assert prefix is not None and len(prefix.ids) >= engine.SharedPrefix.MIN_TOKENS
    assert all(p[:len(prefix.ids)] == prefix.ids and len(p) > len(prefix.ids) for p in prompts)

    plain = engine.generate(model, tokenizer, prompts, 6, batch_size=3)
    shared = engine.generate(model, tokenizer, prompts, 6, batch_size=3, prefix=prefix)
    assert shared.texts == plain.texts and shared.new_tokens == plain.new_tokens
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in LABELS]
    pad = tokenizer.pad_token_id
    torch.testing.assert_close(engine.score_options(model, prompts, options, pad, batch_size=3, prefix=prefix),
                               engine.score_options(model, prompts, options, pad, batch_size=3), atol=1e-4, rtol=0)
    answers = [options[i % len(options)] for i in range(len(prompts))]
    with_prefix = engine.answer_logprobs(model, prompts, answers, pad, batch_size=3, prefix=prefix)
    without = engine.answer_logprobs(model, prompts, answers, pad, batch_size=3)
    assert [n for _, n in with_prefix] == [n for _, n in without]
    assert all(abs(a - b) < 1e-4 for (a, _), (b, _) in zip(with_prefix, without))
    # nothing shared, or a single prompt: no prefix
    assert engine.SharedPrefix.of(model, prompts_of(tokenizer, ["hi", "ok"])) is None
    assert engine.SharedPrefix.of(model, prompts[:1]) is None


def test_labels_scored_from_the_generation_pass_equal_scoring_them_apart(tiny_model):
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    prompts = system_prompts(tokenizer)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in LABELS]
    pad = tokenizer.pad_token_id
    for prefix in (None, engine.SharedPrefix.of(model, prompts)):
        alone = engine.generate(model, tokenizer, prompts, 6, batch_size=3, prefix=prefix)
        both = engine.generate(model, tokenizer, prompts, 6, batch_size=3, prefix=prefix, options=options)
        assert alone.scores is None and both.texts == alone.texts and both.new_tokens == alone.new_tokens
        torch.testing.assert_close(both.scores, engine.score_options(model, prompts, options, pad, batch_size=3,
                                                                     prefix=prefix), atol=1e-5, rtol=0)


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


def detect_task(refs: list[str]) -> str:
    return tasks.decide(tasks.tally(refs))


def test_task_detection():
    assert detect_task(['{"a": 1}', '{"b": "x"}']) == "extraction"
    assert detect_task(['[{"a": 1}]', '{"b": "x"}']) == "extraction"
    assert detect_task(["SELECT 1", "select name from t"]) == "sql"
    assert detect_task(["INSERT INTO t VALUES (1)", "UPDATE t SET a = 2"]) == "sql"
    assert detect_task(["yes", "no", "yes", "no", "yes", "no"]) == "classification"
    assert detect_task(["a long free answer one", "another different answer"]) == "generation"


def unloadable(name: str = "tuned") -> Variant:
    """A variant whose model must never load: the test is about what fails before inference."""
    def load():
        raise AssertionError("a model was loaded before the problem was reported")
    return Variant(name, load)


def problem_of(cfg: EvalConfig, variant_list=None):
    with pytest.raises(TuneforgeError) as caught:
        evaluate(cfg, variant_list or [unloadable()], progress=False)
    return caught.value.problems[0]


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
        assert set(metrics) == set(metric_names("classification", cfg))  # the list --fail-if is checked against
    assert set(result["general"]) == set(result["variants"])
    assert (tmp_path / "eval" / "report.html").exists() and (tmp_path / "eval" / "report.md").exists()
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["n"] == result["n"] == len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_prompt_or_prefix_tuned_classifier_is_evaluated_with_its_label_scores(tiny_model, tickets, tmp_path,
                                                                                method):
    """Their virtual tokens do not go with a prompt cache made outside the model, so the labels
    are scored by whole passes; this crashed before."""
    train(TrainConfig(model=tiny_model, data=tickets, out=tmp_path / "run", method=method, max_steps=2, epochs=1,
                      tracking=[]), progress=False)
    cfg = EvalConfig(data=tickets, model=tiny_model, adapters={"tuned": tmp_path / "run"}, out=tmp_path / "eval",
                     baselines=[], latency_samples=0, limit=8)
    tuned = evaluate(cfg, progress=False)["variants"]["tuned"]
    assert 0 <= tuned["accuracy_constrained"] <= 1 and tuned["perplexity"] > 1
    from tuneforge.models.tuned import load_tuned

    model, tokenizer = load_tuned(tmp_path / "run")
    prompts = prompts_of(tokenizer, ["charged twice", "cannot log in", "thanks"])
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in LABELS]
    table = engine.generate(model, tokenizer, prompts, 4, batch_size=2, options=options).scores
    for i, prompt in enumerate(prompts):  # one prompt at a time: no padding at all
        alone = [engine.answer_logprobs(model, [prompt], [option], tokenizer.pad_token_id)[0][0] for option in options]
        torch.testing.assert_close(table[i], torch.tensor(alone), atol=2e-3, rtol=0)


def test_classification_perplexity_read_from_the_label_scores_equals_scoring_the_references(tiny_model, tickets,
                                                                                            tmp_path):
    """With label scoring on, each reference's log-prob comes from its label's score; with
    it off, the references are scored on their own. The perplexity must not depend on which."""
    found = {}
    for constrained in (True, False):
        cfg = EvalConfig(data=tickets, model=tiny_model, out=tmp_path / str(constrained), shots=1,
                         latency_samples=0, constrained=constrained)
        found[constrained] = evaluate(cfg, progress=False)["variants"]["base-zero-shot"]
    assert "accuracy_constrained" in found[True] and "accuracy_constrained" not in found[False]
    assert found[True]["perplexity"] == pytest.approx(found[False]["perplexity"], rel=1e-4)


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


def measured(result: dict, name: str = "base-zero-shot") -> set[str]:
    return {k for k, v in result["variants"][name].items() if v is not None}


def test_every_metric_a_variant_gets_is_declared(tiny_model, tmp_path):
    for task, answers in (("extraction", [json.dumps([{"n": i}]) for i in range(3)]),
                          ("generation", [f"a free answer number {i}" for i in range(3)])):
        path = write_jsonl(tmp_path / f"{task}.jsonl", [chat(f"q {i}", a) for i, a in enumerate(answers)])
        cfg = EvalConfig(data=path, model=tiny_model, baselines=["zero-shot"], out=tmp_path / task, latency_samples=1)
        result = evaluate(cfg, progress=False)
        assert result["task"] == task
        assert measured(result) == set(metric_names(task, cfg)) and measured(result) <= ALL_METRICS


def test_sql_changes_are_scored_by_the_table_they_leave(tiny_model, tmp_path):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table users (id integer primary key, name text)")
        conn.execute("insert into users values (1, 'ann'), (2, 'bob')")
    rows = [chat("add carl", "INSERT INTO users (name) VALUES ('carl')"),
            chat("rename bob", "UPDATE users SET name = 'rob' WHERE id = 2"),
            chat("who is there", "SELECT name FROM users")]
    result = evaluate(EvalConfig(data=write_jsonl(tmp_path / "q.jsonl", rows), model=tiny_model, sql_db=db,
                                 baselines=["zero-shot"], out=tmp_path / "q", latency_samples=0), progress=False)
    assert result["task"] == "sql" and result["variants"]["base-zero-shot"]["exec_accuracy"] == 0.0
    with sqlite3.connect(db) as conn:
        assert conn.execute("select name from users order by id").fetchall() == [("ann",), ("bob",)]


# --- checked before any model loads ---------------------------------------------------------------

def test_an_empty_or_missing_test_split_is_refused_naming_test_jsonl(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [chat(f"q{i}", "a") for i in range(4)])
    write_jsonl(folder / "val.jsonl", [chat("val question", "a")])
    found = problem_of(EvalConfig(data=folder, out=tmp_path / "e"))
    assert (found.code, found.where) == ("not_prepared", str(folder / "test.jsonl"))
    (folder / "test.jsonl").write_text("\n", encoding="utf-8")
    found = problem_of(EvalConfig(data=folder, out=tmp_path / "e"))
    assert (found.code, found.where) == ("empty_test_split", str(folder / "test.jsonl"))
    assert "--split" in found.message and "--data" in found.message
    # the validation split is still there for whoever asks for it by name
    assert load_examples(EvalConfig(data=folder / "val.jsonl")).references == ["a"]


def test_errors_in_a_test_split_name_its_file_and_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "test.jsonl").write_text(json.dumps(chat("q", "a")) + "\n\n" + json.dumps({"messages": []}) + "\n")
    found = problem_of(EvalConfig(data=folder, out=tmp_path / "e"))
    assert (found.code, found.where) == ("no_assistant_turn", f"{folder / 'test.jsonl'}:3")


def test_limit_draws_a_seeded_sample_stratified_by_label(tmp_path):
    rows = [chat(f"ticket {i}", label) for label in ("billing", "technical") for i in range(30)]  # sorted by label
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    ex = load_examples(EvalConfig(data=path, limit=10, seed=1))
    assert ex.task == "classification"
    assert sorted(ex.references) == ["billing"] * 5 + ["technical"] * 5
    assert load_examples(EvalConfig(data=path, limit=10, seed=1)).prompts == ex.prompts
    assert load_examples(EvalConfig(data=path, limit=10, seed=2)).prompts != ex.prompts
    assert ex.labels == ["billing", "technical"]


def test_sample_keeps_label_shares_and_file_order():
    refs = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    picked = sample(refs, 10, seed=0, stratify=True)
    assert picked == sorted(picked) and len(set(picked)) == 10
    assert [refs[i] for i in picked].count("a") == 6 and [refs[i] for i in picked].count("c") == 1
    assert sample(refs, 7, seed=3, stratify=False) == sample(refs, 7, seed=3, stratify=False)
    assert sample(refs, 500, seed=0, stratify=True) == list(range(100))


def test_fail_if_is_checked_against_the_task_metrics_before_inference(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [chat(f"ticket {i}", "yes" if i % 2 else "no") for i in range(8)])
    found = problem_of(EvalConfig(data=path, baselines=[], fail_if="tuned.rouge_l < 0.5", out=tmp_path / "e"))
    assert found.code == "invalid_fail_if" and "unknown metric 'rouge_l'" in found.message
    assert "accuracy" in found.message  # the metrics of this task are listed
    # a ratio is a valid condition: it is not computed with placeholder zeros
    cfg = EvalConfig(data=path, baselines=["few-shot"], fail_if="tuned.accuracy / base-few-shot.accuracy < 1.1",
                     out=tmp_path / "e")
    with pytest.raises(AssertionError, match="a model was loaded"):
        evaluate(cfg, [unloadable("base-few-shot"), unloadable()], progress=False)


def test_a_missing_or_unreadable_database_fails_before_inference(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [chat("all users", "SELECT * FROM users")])
    found = problem_of(EvalConfig(data=path, task="sql", sql_db=tmp_path / "missing.db", out=tmp_path / "e"))
    assert (found.code, found.where) == ("sql_db_not_found", str(tmp_path / "missing.db"))
    (tmp_path / "notes.db").write_text("not a database " * 50)
    found = problem_of(EvalConfig(data=path, sql_db=tmp_path / "notes.db", out=tmp_path / "e"))
    assert found.code == "sql_db_not_found"


def test_a_requested_task_that_does_not_fit_the_references(tmp_path):
    rows = [chat(f"q{i}", f"a long answer {i} that is much longer than any label would ever be, surely")
            for i in range(6)]
    found = problem_of(EvalConfig(data=write_jsonl(tmp_path / "g.jsonl", rows), task="classification",
                                  out=tmp_path / "e"))
    assert (found.code, found.where) == ("task_mismatch", "--task")
    bad = [chat("q1", '{"a": 1}'), chat("q2", '{"a": 2}'), chat("q3", "not json")]
    found = problem_of(EvalConfig(data=write_jsonl(tmp_path / "x.jsonl", bad), task="extraction", out=tmp_path / "e"))
    assert found.code == "task_mismatch"


def test_references_that_do_not_fit_the_prepared_task_are_named(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"task": "extraction"}))
    write_jsonl(folder / "test.jsonl", [chat("q1", '{"a": 1}'), chat("q2", "no json here")])
    found = problem_of(EvalConfig(data=folder, baselines=[], out=tmp_path / "e"))
    assert (found.code, found.where) == ("invalid_reference", f"{folder / 'test.jsonl'}:2")


def test_eval_runs_on_cuda_when_there_is_one(monkeypatch, tmp_path):
    from tuneforge.evaluate import run
    from tuneforge.train import run as train_run

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_run, "bf16_supported", lambda device: device == "cuda")
    monkeypatch.setattr(run, "run_variant", lambda variant, ex, cfg, shots, bf16, step, device: seen.append(
        (device, bf16)))
    ex = Examples("generation", [[{"role": "user", "content": "q"}]], ["a"], [])
    run.run_all(EvalConfig(data=tmp_path), ex, [unloadable()], progress=False)
    assert seen == [("cuda", True)]
    seen.clear()
    run.run_all(EvalConfig(data=tmp_path, device="cpu", bf16=False), ex, [unloadable()], progress=False)
    assert seen == [("cpu", False)]
