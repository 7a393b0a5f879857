"""The prepare stage end to end on the tiny model: every planted defect named, cleaning, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError

FIXTURES = Path(__file__).parent.parent / "fixtures"

EXPECTED_DEFECTS = {
    2: "invalid_json", 3: "not_an_object", 4: "unknown_format", 5: "missing_field", 6: "empty_content",
    7: "wrong_type", 8: "invalid_role", 9: "bad_turn_order", 10: "no_assistant_turn", 11: "invalid_utf8",
    12: "too_long", 13: "no_trainable_tokens", 14: "invalid_weight", 15: "wrong_type", 19: "mixed_kinds",
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": label}]}


def run(tiny_model, tmp_path, inputs, **kw):
    cfg = PrepareConfig(inputs=inputs, out=tmp_path / "out", model=tiny_model, memorisation_check=False,
                        max_seq_len=kw.pop("max_seq_len", 256), **kw)
    return prepare(cfg)


def test_every_planted_defect_is_named_with_its_line(tiny_model, tmp_path):
    with pytest.raises(TuneforgeError) as caught:
        run(tiny_model, tmp_path, [FIXTURES / "defects.jsonl"])
    found = {int(p.where.rsplit(":", 1)[1]): p.code for p in caught.value.problems}
    assert found == EXPECTED_DEFECTS
    assert caught.value.exit_code == 2
    assert "--on-error drop" in caught.value.hint
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed"
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_drop_mode_keeps_the_good_records_and_lists_the_bad(tiny_model, tmp_path):
    report = run(tiny_model, tmp_path, [FIXTURES / "defects.jsonl"], on_error="drop", split=(1.0, 0.0, 0.0))
    assert report["records_in"] == 19  # the blank line is skipped, not counted
    assert report["records_out"] == 4
    assert sorted((e["line"], e["code"]) for e in report["errors"]) == sorted(EXPECTED_DEFECTS.items())
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["meta"]["line"] for r in rows] == [1, 16, 17, 20]
    assert rows[1]["messages"][0]["content"] == "Classify\n\nMy card was charged twice"


def test_exact_duplicates_contradictions_and_labels(tiny_model, tmp_path):
    rows = [chat(f"ticket number {i} about my invoice", "billing") for i in range(30)]
    rows += [chat(f"the app crashes on screen {i}", "technical") for i in range(30)]
    rows += [chat("  ticket number 0 about my invoice \r\n", "billing")]  # exact duplicate after normalising
    rows += [chat("Is this billing?", "billing"), chat("Is this billing?", "technical")]  # contradiction
    report = run(tiny_model, tmp_path, [write_jsonl(tmp_path / "d.jsonl", rows)])
    assert report["duplicates"]["exact"] == 1
    assert report["contradictions"] == [[{"file": str(tmp_path / "d.jsonl"), "line": 62},
                                         {"file": str(tmp_path / "d.jsonl"), "line": 63}]]
    assert report["task"] == "classification"
    assert report["labels"] == {"billing": 30, "technical": 30}
    assert report["records_out"] == 60
    assert sum(report["splits"].values()) == 60


def test_near_duplicates_stay_in_one_split(tiny_model, tmp_path):
    base = ("my package arrived damaged and the box was open when it came to the door this morning, "
            "the courier left it in the rain and nobody rang the bell so I only found it hours later ") * 2
    rows = [chat(base + f"variant {i}", "other") for i in range(2)]
    rows += [chat(f"unrelated ticket {i} " + "word " * (i % 7) + f"end {i * 7}", "billing") for i in range(40)]
    rows += [chat(f"another one {i} with words {i * 3}", "other") for i in range(40)]
    report = run(tiny_model, tmp_path, [write_jsonl(tmp_path / "n.jsonl", rows)], near_dup_threshold=0.8)
    assert report["duplicates"]["near"] >= 1
    placed = {}
    for split in ("train", "val", "test"):
        for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            placed[rec["meta"]["line"]] = split
            if rec["meta"]["line"] == 2:
                assert rec["meta"]["near_duplicate_of"]["line"] == 1
    assert placed[1] == placed[2]


def test_split_is_deterministic_and_stratified(tiny_model, tmp_path):
    rows = [chat(f"ticket {i} text {i * 13} about {label}", label)
            for label in ("billing", "technical", "account", "other") for i in range(50)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    first = run(tiny_model, tmp_path / "a", [path], split=(0.8, 0.1, 0.1), seed=3)
    second = run(tiny_model, tmp_path / "b", [path], split=(0.8, 0.1, 0.1), seed=3)
    assert (tmp_path / "a/out/test.jsonl").read_text() == (tmp_path / "b/out/test.jsonl").read_text()
    assert first["splits"] == second["splits"] == {"train": 160, "val": 20, "test": 20}
    labels = [json.loads(line)["meta"]["label"] for line in (tmp_path / "a/out/test.jsonl").read_text().splitlines()]
    assert {label: labels.count(label) for label in set(labels)} == {"billing": 5, "technical": 5, "account": 5, "other": 5}


def test_given_test_file_and_leak_removal(tiny_model, tmp_path):
    long = ("about invoices and refunds that never arrived although the bank says the money left weeks ago, "
            "my account manager promised a callback on monday and then nothing happened for eleven days")
    train = [chat(f"train ticket {i} {i * 11}", "billing") for i in range(20)]
    held = [chat(f"held ticket {long}", "billing")]
    train.append(chat(f"held ticket {long} please", "billing"))  # near copy of the test record
    report = run(tiny_model, tmp_path, [write_jsonl(tmp_path / "t.jsonl", train)],
                 test=[write_jsonl(tmp_path / "h.jsonl", held)], near_dup_threshold=0.8)
    assert report["splits"]["test"] == 1
    assert report["duplicates"]["leaks_dropped"] >= 1


def test_pii_is_redacted_and_counted(tiny_model, tmp_path):
    rows = [chat(f"mail me at jane.doe{i}@example.com or call +1 415 555 0100", "account") for i in range(5)]
    report = run(tiny_model, tmp_path, [write_jsonl(tmp_path / "p.jsonl", rows)], redact_pii=True,
                 split=(1.0, 0.0, 0.0))
    assert report["pii"]["EMAIL"] == 5
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "<EMAIL>" in text and "@example.com" not in text
    # redaction makes the records identical, and identical records are duplicates
    assert report["duplicates"]["exact"] == 4


def test_csv_columns_and_formats(tiny_model, tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('text,category\n"card, declined",billing\n"multi\nline",technical\nbad,row,extra\n',
                        encoding="utf-8")
    report = run(tiny_model, tmp_path, [csv_path], on_error="drop", split=(1.0, 0.0, 0.0))
    assert report["records_out"] == 2
    assert report["errors"][0]["line"] == 5 and report["errors"][0]["code"] == "wrong_column_count"
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert rows[1]["messages"][0]["content"] == "multi\nline" and rows[1]["meta"]["line"] == 3


def test_preference_and_text_kinds(tiny_model, tmp_path):
    pairs = [{"prompt": f"\n\nHuman: question {i}?\n\nAssistant:", "chosen": f"good answer {i}",
              "rejected": f"bad answer {i}"} for i in range(10)]
    report = run(tiny_model, tmp_path / "p", [write_jsonl(tmp_path / "pref.jsonl", pairs)])
    assert report["task"] == "preference"
    rec = json.loads((tmp_path / "p/out/train.jsonl").read_text().splitlines()[0])
    assert rec["messages"] == [{"role": "user", "content": rec["messages"][0]["content"]}]
    assert rec["chosen"].startswith("good answer")
    texts = [{"text": f"domain document number {i} " * 50} for i in range(10)]
    report = run(tiny_model, tmp_path / "t", [write_jsonl(tmp_path / "text.jsonl", texts)], max_seq_len=32)
    assert report["task"] == "pretraining" and report["records_out"] == 10  # long text is chunked, not too_long


def test_unknown_config_key_names_the_valid_ones():
    from tuneforge.config import build_config

    with pytest.raises(TuneforgeError) as caught:
        build_config(PrepareConfig, overrides=["inputs=[a.jsonl]", "out=x", "sead=1", "split=[0.5,0.1,0.1]"])
    lines = [p.line() for p in caught.value.problems]
    assert any("unknown_key" in line and "'sead'" in line and "seed" in line for line in lines)
    assert any("invalid_value" in line and "split" in line for line in lines)


def _memorised_texts(model_name: str, count: int) -> list[str]:
    """Texts the model reproduces: 16 tokens of a prompt, then the model's own greedy 16 tokens
    (kept only where decoding and re-encoding gives the same tokens back)."""
    import torch

    from tuneforge.data.memorise import CONTINUATION, PREFIX
    from tuneforge.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_name), load_model(model_name)
    found: list[str] = []
    for i in range(50):
        ids = tokenizer(f"ticket {i}: my card was charged twice and the app crashes on login {i * 7}",
                        add_special_tokens=False)["input_ids"][:PREFIX]
        prompt = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=CONTINUATION, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
        full = out[0].tolist()
        text = tokenizer.decode(full)
        if len(full) == PREFIX + CONTINUATION and tokenizer(text, add_special_tokens=False)["input_ids"] == full:
            found.append(text)
        if len(found) == count:
            return found
    raise AssertionError("the tiny model gave too few re-encodable continuations")


def test_memorisation_check_finds_exactly_the_memorised_records(tiny_model, tmp_path):
    memorised = _memorised_texts(tiny_model, 3)
    # the random tiny model cannot continue these by chance: their continuations are fixed text
    unseen = [f"support note {i}: the refund for order {i * 13} was approved on monday and the customer "
              f"thanked us twice, then asked about invoice {i * 31} and the delivery address" for i in range(5)]
    rows = [{"text": t} for t in memorised + unseen]
    cfg = PrepareConfig(inputs=[write_jsonl(tmp_path / "m.jsonl", rows)], out=tmp_path / "out", model=tiny_model,
                        memorisation_samples=len(rows), split=(1.0, 0.0, 0.0), near_dup_threshold=1.0)
    report = prepare(cfg)
    assert report["memorisation"]["checked"] == len(rows)
    assert report["memorisation"]["reproduced"] == len(memorised)
