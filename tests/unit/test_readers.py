"""Readers on their own: JSON arrays (streamed, with line numbers), CSV dialects and headers,
Parquet, byte-order marks and UTF-16."""

from __future__ import annotations

import codecs
import json
import tracemalloc
from pathlib import Path

import pytest

from tuneforge.data.columns import plan_columns
from tuneforge.data.formats import Columns
from tuneforge.data.jsonarray import read_json_array
from tuneforge.data.readers import Header, read_csv, read_jsonl, read_parquet, read_records, sniff_delimiter
from tuneforge.errors import Problem


def rows(path: Path, **kw) -> list:
    return list(read_records(path) if not kw else read_json_array(path, fallback=read_jsonl, **kw))


def codes(items: list) -> list:
    return [(line, v.code) for line, v in items if isinstance(v, Problem)]


# --- JSON arrays ---------------------------------------------------------------------------

ARRAY = """[
  {"prompt": "a", "completion": "b"},
  {
    "prompt": "multi\\nline?", "completion": "no"
  },
  {"prompt": "c",
   "completion": "d"}, 12345678901234567890, "a string", true, null,
  {"prompt": "e", "completion": "f"}
]
"""


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_json_array_elements_and_lines_at_any_chunk_size(tmp_path, chunk):
    path = tmp_path / "a.json"
    path.write_text(ARRAY, encoding="utf-8")
    got = rows(path, chunk=chunk)
    assert [line for line, _ in got] == [2, 3, 6, 7, 7, 7, 7, 8]
    assert [v for _, v in got] == json.loads(ARRAY)


def test_json_array_error_names_the_line_it_is_on(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"a": 1},\n{"a": 2,\n "b": oops},\n{"a": 3}\n]\n', encoding="utf-8")
    got = rows(path, chunk=5)
    assert got[0] == (2, {"a": 1})
    assert codes(got) == [(4, "invalid_json")]
    assert "starts on line 3" in got[1][1].message


def test_json_array_not_closed(tmp_path):
    path = tmp_path / "open.json"
    path.write_text('[{"a": 1},\n{"a": 2}\n', encoding="utf-8")
    got = rows(path, chunk=4)
    assert [v for _, v in got[:2]] == [{"a": 1}, {"a": 2}]
    assert codes(got) == [(3, "invalid_json")]


@pytest.mark.parametrize("chunk", [1, 4, 1 << 20])
def test_json_array_commas_are_checked_and_every_intact_element_kept(tmp_path, chunk):
    path = tmp_path / "commas.json"
    path.write_text('[\n{"a": 1}\n{"a": 2},,\n{"a": 3},\n]\n', encoding="utf-8")
    got = rows(path, chunk=chunk)
    assert [v for _, v in got if not isinstance(v, Problem)] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert codes(got) == [(3, "invalid_json"), (3, "invalid_json"), (5, "invalid_json")]
    messages = [v.message for _, v in got if isinstance(v, Problem)]
    assert "no ','" in messages[0] and "no element before it" in messages[1] and "before the closing" in messages[2]
    (tmp_path / "lead.json").write_text('[, {"a": 1}]', encoding="utf-8")
    assert codes(rows(tmp_path / "lead.json", chunk=chunk)) == [(1, "invalid_json")]


def test_json_array_bad_utf8_spoils_only_its_element(tmp_path):
    path = tmp_path / "bytes.json"
    path.write_bytes(b'[{"a": "ok"},\n{"a": "caf\xe9"},\n{"a": "fine"}]')
    got = rows(path, chunk=3)
    assert got[0] == (1, {"a": "ok"}) and got[2] == (3, {"a": "fine"})
    assert codes(got) == [(2, "invalid_utf8")]


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert rows(path) == [(1, {"a": 1}), (3, {"a": 2})]
    (tmp_path / "empty.json").write_text("  \n", encoding="utf-8")
    assert rows(tmp_path / "empty.json") == []


def test_json_array_is_streamed_not_loaded_whole(tmp_path):
    path = tmp_path / "big.json"
    element = json.dumps({"messages": [{"role": "user", "content": "word " * 40},
                                       {"role": "assistant", "content": "answer"}]})
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[\n" + ",\n".join([element] * 40_000) + "\n]\n")
    size = path.stat().st_size
    assert size > 10_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_json_array(path, fallback=read_jsonl, chunk=1 << 16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 40_000
    assert peak < size / 10  # a few 64 KiB chunks of text; loading the file whole needs twice its size


# --- encodings -----------------------------------------------------------------------------

RECORDS = [{"prompt": "café ünïcode", "completion": "ok"}, {"prompt": "second", "completion": "two"}]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_jsonl_json_and_csv_with_a_byte_order_mark(tmp_path, encoding):
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS)
    (tmp_path / "d.jsonl").write_bytes(bom + lines.encode(encoding))
    (tmp_path / "d.json").write_bytes(bom + json.dumps(RECORDS, ensure_ascii=False, indent=1).encode(encoding))
    (tmp_path / "d.csv").write_bytes(bom + "prompt,completion\r\ncafé ünïcode,ok\r\nsecond,two\r\n".encode(encoding))
    assert rows(tmp_path / "d.jsonl") == [(1, RECORDS[0]), (2, RECORDS[1])]
    assert rows(tmp_path / "d.json") == [(2, RECORDS[0]), (6, RECORDS[1])]
    assert rows(tmp_path / "d.csv") == [(1, Header(("prompt", "completion"))), (2, RECORDS[0]), (3, RECORDS[1])]


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "hi"}\n'.encode("utf-16-le"))
    got = rows(path)
    assert codes(got) == [(0, "unsupported_encoding")]
    assert "UTF-16" in got[0][1].message and "UTF-8" in got[0][1].message


def test_bad_utf16_is_reported_on_its_line(tmp_path):
    good = '{"text": "one"}\n'.encode("utf-16-le")
    bad = '{"text": "t'.encode("utf-16-le") + b"\x00\xdc" + 'o"}\n'.encode("utf-16-le")  # a lone surrogate
    path = tmp_path / "d.jsonl"
    path.write_bytes(codecs.BOM_UTF16_LE + good + bad + good)
    got = rows(path)
    assert got[0] == (1, {"text": "one"}) and got[2] == (3, {"text": "one"})
    assert codes(got) == [(2, "invalid_encoding")]
    assert "UTF-16" in got[1][1].message


# --- CSV -----------------------------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(tmp_path, delimiter):
    path = tmp_path / "d.csv"
    body = [["input", "output"], ["a, b; c | d", "x"], ["plain", "y"]]
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(body)
    got = rows(path)
    assert got[0] == (1, Header(("input", "output")))
    assert [v for _, v in got[1:]] == [{"input": "a, b; c | d", "output": "x"}, {"input": "plain", "output": "y"}]


def test_sniffing_uses_the_header_when_text_is_full_of_other_punctuation():
    assert sniff_delimiter("text,label\nhello; there; you,x\n") == ","
    assert sniff_delimiter("text;label\nhello, there, you;x\n") == ";"
    assert sniff_delimiter("text\nhello, there\n") == ","


def test_csv_duplicate_header_is_one_error_naming_the_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\na,b,c\nd,e,f\n", encoding="utf-8")
    got = list(read_csv(path))
    assert len(got) == 1
    header = got[0][1]
    assert [p.code for p in header.problems] == ["duplicate_column"]
    assert "'text'" in header.problems[0].message and "1, 3" in header.problems[0].message


# --- Parquet -------------------------------------------------------------------------------

def test_parquet_rows_and_header(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [1, 2, 3]}), path, row_group_size=2)
    got = list(read_parquet(path))
    assert got[0] == (0, Header(("text", "label")))
    assert got[1:] == [(1, {"text": "a", "label": 1}), (2, {"text": "b", "label": 2}), (3, {"text": "c", "label": 3})]
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), dup)
    got = list(read_parquet(dup))
    assert len(got) == 1 and got[0][1].problems[0].code == "duplicate_column"
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert codes(list(read_parquet(tmp_path / "broken.parquet"))) == [(0, "invalid_parquet")]


# --- which columns -------------------------------------------------------------------------

@pytest.mark.parametrize("header, mapped", [
    (["input", "output"], ("input", "output")),
    (["Question", "Answer"], ("Question", "Answer")),
    (["id", "prompt", "response"], ("prompt", "response")),
    (["instruction", "response"], ("instruction", "response")),
    (["question", "sql"], ("question", "sql")),
    (["Text", "Label"], ("Text", "Label")),
])
def test_common_column_names_are_mapped(header, mapped):
    plan = plan_columns(header, "auto", Columns())
    assert not plan.problems
    assert (plan.columns.input_col, plan.columns.output_col) == mapped


@pytest.mark.parametrize("header", [["instruction", "input", "output"], ["prompt", "completion"],
                                    ["text", "category"], ["text"], ["prompt", "chosen", "rejected"]])
def test_known_formats_are_left_to_the_record_reader(header):
    plan = plan_columns(header, "auto", Columns())
    assert not plan.problems and not plan.mapped and plan.columns == Columns()


def test_unknown_header_is_one_problem_with_the_flags_to_use():
    plan = plan_columns(["foo", "bar", "baz"], "auto", Columns())
    assert [p.code for p in plan.problems] == ["unknown_columns"]
    assert "[foo, bar, baz]" in plan.problems[0].message
    assert "--input-col foo --output-col bar" in plan.problems[0].message


def test_a_wrong_input_col_is_one_problem_naming_the_header():
    plan = plan_columns(["text", "label"], "auto", Columns("txt", None))
    assert [p.message for p in plan.problems] == [
        "column 'txt' is not in the header [text, label]; pass --input-col with one of them"]
    plan = plan_columns(["text", "label"], "auto", Columns("Text", "label"))
    assert "did you mean 'text'?" in plan.problems[0].message
    plan = plan_columns(["q", "a"], "auto", Columns("q", None))
    assert "pass --output-col" in plan.problems[0].message
