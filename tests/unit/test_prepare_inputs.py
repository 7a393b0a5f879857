"""prepare's guard rails: the output folder, tables with awkward headers, content parts,
counting bad records, warnings about empty splits, a full disk, no debris."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tuneforge import cli
from tuneforge.data import prepare as prepare_module
from tuneforge.data.config import PrepareConfig
from tuneforge.data.formats import Columns, normalise
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError

NO_MODEL = "/nonexistent/model"  # a check that names the folder proves it ran before the model loaded


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(inputs: list[Path], out: Path, model: str, **kw) -> PrepareConfig:
    kw.setdefault("max_seq_len", 256)
    return PrepareConfig(inputs=inputs, out=out, model=model, memorisation_check=False, **kw)


def codes(caught) -> list[str]:
    return [p.code for p in caught.value.problems]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --- the output folder (1, 6) --------------------------------------------------------------

@pytest.mark.parametrize("name", ["train.jsonl", "raw.jsonl"])
def test_out_holding_an_input_is_refused_before_anything_is_read(tmp_path, name):
    data = write_jsonl(tmp_path / "x" / name, [chat(f"q {i}", "a") for i in range(20)])
    before = data.read_bytes()
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([data], tmp_path / "x", NO_MODEL))
    assert codes(caught) == ["out_holds_input"]
    assert str(data) in caught.value.problems[0].message
    assert data.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [name]


def test_out_holding_a_given_test_file_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat("q", "a")])
    held = write_jsonl(tmp_path / "out" / "test.jsonl", [chat("h", "a")])
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([train], tmp_path / "out", NO_MODEL, test=[held]))
    assert codes(caught) == ["out_holds_input"] and "overwrite" in caught.value.problems[0].message


def test_out_that_is_a_file_or_under_one_is_refused_first(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub" / "dir"):
        with pytest.raises(TuneforgeError) as caught:
            prepare(config([data], out, NO_MODEL))
        assert codes(caught) == ["out_not_a_folder"]


def test_unwritable_out_is_refused_first(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    # root may write anywhere, so the refusal is simulated where the folder is probed
    monkeypatch.setattr("tuneforge.outdir.tempfile.TemporaryFile", denied)
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([data], tmp_path / "out", NO_MODEL))
    assert codes(caught) == ["out_not_writable"]


def test_a_failed_run_leaves_no_empty_folder_behind(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    with pytest.raises(TuneforgeError):
        prepare(config([data], tmp_path / "new" / "out", NO_MODEL))  # the model cannot load
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(TuneforgeError):
        prepare(config([data], tmp_path / "kept", NO_MODEL))
    assert (tmp_path / "kept").is_dir()  # the user's folder stays


class _FullDisk:
    """A text file whose writes fail with ENOSPC once `limit` characters are written."""

    def __init__(self, handle, limit: int):
        self.handle, self.left = handle, limit

    def write(self, text: str) -> int:
        self.left -= len(text)
        if self.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(text)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("target", [".prepare-spool.jsonl", ".train.jsonl.tmp"])
def test_full_disk_is_a_clear_error_and_leaves_no_debris(tiny_model, tmp_path, monkeypatch, target):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i} about things", f"answer {i}") for i in range(50)])
    real_open = open

    def filling_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return _FullDisk(handle, 500) if Path(path).name == target and "w" in mode else handle

    monkeypatch.setattr(prepare_module, "open", filling_open, raising=False)
    out = tmp_path / "out"
    out.mkdir()  # the user's folder: kept, so what is left in it can be checked
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([data], out, tiny_model, split=(0.8, 0.1, 0.1)))
    assert codes(caught) == ["disk_full"]
    assert "no space left on device" in caught.value.problems[0].message
    assert leftovers(out) == []
    assert not (out / "train.jsonl").exists()


# --- tables: headers once, not per row (4, 8) ----------------------------------------------

def test_wrong_input_col_is_one_error_naming_the_header(tiny_model, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\n" + "".join(f"row {i},yes\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([path], tmp_path / "out", tiny_model, input_col="txt"))
    assert [p.line() for p in caught.value.problems] == [
        f"{path}:1: missing_column: column 'txt' is not in the header [text, label]; "
        "pass --input-col with one of them"]


def test_duplicate_csv_header_is_one_error(tiny_model, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label,label\n" + "".join(f"row {i},a,b\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([path], tmp_path / "out", tiny_model))
    assert codes(caught) == ["duplicate_column"] and "'label'" in caught.value.problems[0].message


@pytest.mark.parametrize("header, sep", [("input,output", ","), ("question;answer", ";"), ("prompt\tresponse", "\t")])
def test_common_headers_and_delimiters_need_no_flags(tiny_model, tmp_path, header, sep):
    path = tmp_path / "c.csv"
    path.write_text(header + "\n" + "".join(f"ticket {i} text{sep}label {i % 3}\n" for i in range(30)),
                    encoding="utf-8")
    report = prepare(config([path], tmp_path / "out", tiny_model, split=(1.0, 0.0, 0.0)))
    assert report["errors"] == [] and report["records_out"] == 30
    source, target = header.split(sep)
    assert report["columns"] == {str(path): {"input": source, "output": target}}
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert [m["content"] for m in first["messages"]] == ["ticket 0 text", "label 0"]


def test_unusable_header_is_one_line_with_the_flags_to_use(tiny_model, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("foo,bar\n" + "".join(f"a {i},b\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([path], tmp_path / "out", tiny_model))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].code == "unknown_columns"
    assert "--input-col foo --output-col bar" in caught.value.problems[0].message
    # a header problem is the file's, not a record's: no 'bad records', no '--on-error drop' advice
    assert caught.value.hint == f"1 file cannot be read as given: {path}"


def test_drop_mode_skips_an_unreadable_table_and_says_so(tiny_model, tmp_path, capsys, quiet_env):
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n" + "".join(f"a {i},b\n" for i in range(30)), encoding="utf-8")
    good = tmp_path / "good.csv"
    good.write_text("input,output\n" + "".join(f"question {i},answer {i}\n" for i in range(30)), encoding="utf-8")
    code, err = run_cli(["prepare", str(bad), str(good), "--out", str(tmp_path / "out"), "--model", tiny_model,
                         "--no-memorisation-check", "--on-error", "drop"], capsys)
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["records_out"] == 30 and report["bad_records"] == 0
    assert f"warning: {bad} was not read: the header [foo, bar] matches no known format" in err


def test_utf16_csv_with_bom_is_read(tiny_model, tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(("text,label\r\n" + "".join(f"caf\u00e9 {i},x{i % 2}\r\n" for i in range(30))).encode("utf-16"))
    report = prepare(config([path], tmp_path / "out", tiny_model, split=(1.0, 0.0, 0.0)))
    assert report["records_out"] == 30
    assert "caf\u00e9 0" in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")


def test_utf16_without_bom_is_one_problem_for_the_file(tiny_model, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes("".join(json.dumps(chat(f"q {i}", "a")) + "\n" for i in range(20)).encode("utf-16-le"))
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([path], tmp_path / "out", tiny_model))
    assert [p.line().split(": ")[:2] for p in caught.value.problems] == [[str(path), "unsupported_encoding"]]
    assert caught.value.hint == f"1 file cannot be read as given: {path}"


# --- content parts, every bad message (10) -------------------------------------------------

def test_text_parts_are_joined():
    rec = normalise({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "ok"}]}, "auto", Columns())
    assert not rec.problems
    assert rec.messages[0]["content"] == "first\nsecond"


def test_every_bad_message_and_part_is_reported():
    rec = normalise({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "robot", "content": "hi"},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}, "plain"]},
        {"role": "assistant", "content": ""},
    ]}, "auto", Columns())
    assert [(p.code, p.message.split(" ")[0]) for p in rec.problems] == [
        ("unsupported_content_part", "messages[0].content[1]"),
        ("invalid_role", "messages[1].role"),
        ("unsupported_content_part", "messages[2].content[0]"),
        ("wrong_type", "messages[2].content[1]"),
        ("empty_content", "'messages[3].content'"),
    ]
    assert "'image_url'" in rec.problems[0].message


def test_a_bad_role_does_not_hide_bad_content():
    rec = normalise({"messages": [{"role": "robot", "content": [{"type": "image_url"}]},
                                  {"role": "assistant", "content": "x"}]}, "auto", Columns())
    assert [p.code for p in rec.problems] == ["invalid_role", "unsupported_content_part"]


# --- counting and warnings (7, 9) ----------------------------------------------------------

def test_bad_records_are_counted_once_each(tiny_model, tmp_path):
    rows = [chat(f"fine {i}", "ok") for i in range(5)]
    rows.append({"messages": [{"role": "robot", "content": "x"}, {"role": "wizard", "content": "y"}]})
    rows.append({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]})
    with pytest.raises(TuneforgeError) as caught:
        prepare(config([write_jsonl(tmp_path / "d.jsonl", rows)], tmp_path / "out", tiny_model))
    assert len(caught.value.problems) == 4
    assert caught.value.hint.startswith("2 bad records (4 problems: empty_content 2, invalid_role 2)")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["bad_records"] == 2


@pytest.mark.parametrize("n", [1, 3])
def test_empty_val_and_test_splits_are_warned_about(tiny_model, tmp_path, n):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i}", f"answer {i}") for i in range(n)])
    report = prepare(config([data], tmp_path / "out", tiny_model))
    assert report["splits"] == {"train": n, "val": 0, "test": 0}
    assert any(w.startswith("the val split is empty") for w in report["warnings"])
    assert any(w.startswith("the test split is empty") and "tuneforge eval" in w for w in report["warnings"])


def test_no_warning_when_both_held_out_splits_have_records(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i} on topic {i * 7}", f"answer {i}") for i in range(40)])
    report = prepare(config([data], tmp_path / "out", tiny_model))
    assert report["splits"]["val"] and report["splits"]["test"]
    assert not any("split is empty" in w for w in report["warnings"])


# --- through the CLI -------------------------------------------------------------------------

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        cli.main(args)
    return caught.value.code, capsys.readouterr().err


def test_cli_prints_the_empty_split_warnings(tiny_model, tmp_path, capsys, quiet_env):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i}", f"answer {i}") for i in range(3)])
    code, err = run_cli(["prepare", str(data), "--out", str(tmp_path / "out"), "--model", tiny_model,
                         "--no-memorisation-check"], capsys)
    assert code == 0
    assert "warning: the val split is empty" in err and "warning: the test split is empty" in err


def test_cli_refuses_out_over_the_input_in_one_line(tmp_path, capsys, quiet_env):
    data = write_jsonl(tmp_path / "x" / "train.jsonl", [chat("q", "a")])
    code, err = run_cli(["prepare", str(data), "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"{tmp_path / 'x'}: out_holds_input: the output folder holds the input file {data}; prepare would "
        "overwrite it with the cleaned split; prepare writes train.jsonl, val.jsonl, test.jsonl, report.json, "
        "report.md there, so choose a separate --out folder"]


@pytest.mark.parametrize("split, message", [
    ("0.5,0.5", "split: expected 3 values like 0.8,0.1,0.1, got 2: 0.5,0.5"),
    ("abc", "split: expected 3 values like 0.8,0.1,0.1, got 'abc'"),
])
def test_cli_config_errors_are_plain_words(tmp_path, capsys, quiet_env, split, message):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    code, err = run_cli(["prepare", str(data), "--out", str(tmp_path / "out"), "--split", split], capsys)
    assert code == 2
    assert err.strip() == f"config: invalid_value: {message}"
