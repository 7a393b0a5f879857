"""Stream records out of user files with their line numbers, never raising on bad bytes.

Each reader yields `(line, value)` where value is the parsed object or a
`Problem` for that line, so validation can list every bad line in one pass.
JSONL and CSV stream; a `.json` array is read whole (it cannot be streamed
without a JSON event parser) but still reports the line each element starts on.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _json_line(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem("invalid_utf8", f"byte {exc.start} is not valid UTF-8; re-save the file as UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return Problem("invalid_json", f"{exc.msg} at column {exc.colno}; each line must be one JSON object")
    except RecursionError:
        return Problem("invalid_json", "nesting is too deep")


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            yield number, _json_line(raw)


def read_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield line, Problem("invalid_utf8", f"byte {exc.start} is not valid UTF-8; re-save the file as UTF-8")
        return
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        # A .json file that is really JSON Lines is common enough to accept.
        yield from read_jsonl(path)
        return
    decoder = json.JSONDecoder()
    pos, line, counted = start + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            yield text.count("\n") + 1, Problem("invalid_json", "the JSON array is not closed with ']'")
            return
        if text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield line, Problem("invalid_json", f"{exc.msg}; the rest of the array cannot be read")
            return
        except RecursionError:
            yield line, Problem("invalid_json", "nesting is too deep; the rest of the array cannot be read")
            return
        yield line, value


def read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        sample = handle.read(4096)
        handle.seek(0)
        if sample.startswith("\ufeff"):
            handle.read(1)
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, Problem("invalid_csv", f"{exc}; check the quoting of the header")
            return
        header = [h.strip() for h in header]
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield line, Problem("invalid_csv", f"{exc}; check the quoting on this row")
                line = reader.line_num + 1
                continue
            if not row or all(not cell.strip() for cell in row):
                line = reader.line_num + 1
                continue
            if any(_has_surrogates(cell) for cell in row):
                yield line, Problem("invalid_utf8", "the row is not valid UTF-8; re-save the file as UTF-8")
            elif len(row) != len(header):
                yield line, Problem(
                    "wrong_column_count",
                    f"the row has {len(row)} columns, the header has {len(header)}; check quoting and commas",
                )
            else:
                yield line, dict(zip(header, row))
            line = reader.line_num + 1


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:
        yield 0, Problem("invalid_parquet", f"cannot read Parquet file ({type(exc).__name__})")
        return
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, {k: _plain(v) for k, v in record.items()}


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Dispatch on the file suffix; the caller has checked it is one of SUFFIXES."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json_array(path)
    if suffix == ".csv":
        return read_csv(path)
    return read_parquet(path)


def check_input(path: Path) -> Problem | None:
    if not path.exists():
        return Problem("file_not_found", "the input file does not exist", str(path))
    if path.is_dir():
        return Problem("not_a_file", "a folder was given; pass the data files inside it", str(path))
    if path.suffix.lower() not in SUFFIXES:
        return Problem(
            "unsupported_file_type", f"use one of {', '.join(SUFFIXES)} (rename the file if the content is one of them)",
            str(path),
        )
    return None
