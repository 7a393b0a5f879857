"""Stream records out of user files with their line numbers, never raising on bad bytes.

Each reader yields `(line, value)` where value is the parsed object or a
`Problem` for that line, so validation can list every bad line in one pass.
Tabular readers (CSV, Parquet) first yield `(line, Header)` so the caller can
check the column names once instead of once per row. Every format streams:
a `.json` array is parsed element by element (see `jsonarray`).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.jsonarray import read_json_array
from tuneforge.data.textfile import BAD_CHAR, MARK, bad_text, encoding_of
from tuneforge.errors import Problem

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DELIMITERS = ",;\t|"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Header:
    """The column names of a tabular file, yielded before its first row. With problems
    (such as a name given twice) the reader yields no rows after it."""

    names: tuple[str, ...]
    problems: tuple[Problem, ...] = ()


def _json_line(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem("invalid_utf8", f"byte {exc.start} is not valid UTF-8; re-save the file as UTF-8")
    return _json_text(text)


def _json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return Problem("invalid_json", f"{exc.msg} at column {exc.colno}; each line must be one JSON object")
    except RecursionError:
        return Problem("invalid_json", "nesting is too deep")


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    encoding, problem = encoding_of(path)
    if problem:
        yield 0, problem  # line 0: the whole file
        return
    if encoding.startswith("utf-8"):
        # bytes, decoded per line: fast, and a bad byte spoils only its own line
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                yield number, _json_line(raw)
        return
    with open(path, encoding=encoding, errors=MARK, newline="\n") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            yield number, bad_text(encoding, "the line") if BAD_CHAR.search(text) else _json_text(text)


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV file from its first lines, among , ; tab and |.

    The header decides when only one candidate appears in it (header names rarely hold
    punctuation); csv.Sniffer, limited to the candidates the header has, breaks ties."""
    header = sample.split("\n", 1)[0]
    present = [d for d in DELIMITERS if d in header]
    if len(present) <= 1:
        return present[0] if present else ","
    lines = sample.split("\n")
    whole = "\n".join(lines[:-1] if len(lines) > 1 else lines)  # the last line may be cut short
    try:
        return csv.Sniffer().sniff(whole, delimiters="".join(present)).delimiter
    except csv.Error:
        return max(present, key=header.count)


def _duplicates(names: list[str]) -> list[Problem]:
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        if name:  # unnamed columns (a trailing delimiter, an index column) are never read
            where.setdefault(name, []).append(i)
    return [Problem("duplicate_column",
                    f"the header names column '{name}' {len(cols)} times (columns "
                    f"{', '.join(map(str, cols))}); one would overwrite the other, so rename them")
            for name, cols in where.items() if len(cols) > 1]


def read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    encoding, problem = encoding_of(path)
    if problem:
        yield 0, problem  # line 0: the whole file
        return
    with open(path, "r", encoding=encoding, errors=MARK, newline="") as handle:
        delimiter = sniff_delimiter(handle.read(64 * 1024))
    with open(path, "r", encoding=encoding, errors=MARK, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, Problem("invalid_csv", f"{exc}; check the quoting of the header")
            return
        if any(BAD_CHAR.search(name) for name in header):
            yield 1, bad_text(encoding, "the header")
            return
        header = [h.strip() for h in header]
        problems = _duplicates(header)
        yield 1, Header(tuple(header), tuple(problems))
        if problems:
            return
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
            if any(BAD_CHAR.search(cell) for cell in row):
                yield line, bad_text(encoding, "the row")
            elif len(row) != len(header):
                name = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}[delimiter]
                yield line, Problem(
                    "wrong_column_count",
                    f"the row has {len(row)} columns, the header has {len(header)}; check quoting and {name}",
                )
            else:
                yield line, dict(zip(header, row))
            line = reader.line_num + 1


def read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = list(table.schema_arrow.names)
    except Exception as exc:
        yield 0, Problem("invalid_parquet", f"cannot read Parquet file ({type(exc).__name__})")
        return
    problems = _duplicates(names)
    yield 0, Header(tuple(names), tuple(problems))
    if problems:
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
        return read_json_array(path, fallback=read_jsonl)
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

