"""Uploaded files: stored under the jobs folder by id, validated with the prepare stage's validator.

    row = save_upload(folders, store, "train.jsonl", source, purpose="fine-tune")
    row.status            # "processed", or "error" with status_details naming the first bad lines

The client's file name is kept only as a label: on disk a file is `files/<id><suffix>`, the
suffix one of the formats prepare reads (.jsonl, .json, .csv, .parquet; anything else is
stored as .jsonl, OpenAI's format), so no name a client sends can reach a path. A bad file
is still stored (as OpenAI does); a job that uses it fails at validating_files and its
events list every bad line (tuneforge.jobs.worker).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from tuneforge.data.formats import Columns
from tuneforge.data.readers import SUFFIXES
from tuneforge.data.validate import Validator
from tuneforge.jobs.store import FileRow, Store, new_id

SHOWN_PROBLEMS = 3  # bad lines named in a status or an error; the job's events hold them all
PURPOSES = ("fine-tune",)


class Folders:
    """The jobs folder: jobs.db, files/ (uploads by id) and runs/<job id>/ (prepare + train)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files = self.root / "files"
        self.runs = self.root / "runs"
        for folder in (self.files, self.runs):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def db(self) -> Path:
        return self.root / "jobs.db"

    def file(self, row: FileRow) -> Path:
        return self.files / row.stored

    def run(self, job_id: str) -> Path:
        return self.runs / job_id


def label(filename: str | None) -> str:
    """The client's file name, reduced to its last part, for display only."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name.replace("\x00", "")
    return name[:255] or "upload.jsonl"


def save_upload(folders: Folders, store: Store, filename: str | None, source: BinaryIO, purpose: str) -> FileRow:
    """Copy the upload to files/<id><suffix>, validate it, record it."""
    file_id = new_id("file-")
    suffix = PurePosixPath(label(filename)).suffix.lower()
    stored = file_id + (suffix if suffix in SUFFIXES else ".jsonl")
    path = folders.files / stored
    tmp = path.with_name(f".{stored}.tmp")
    with open(tmp, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)
    tmp.replace(path)
    kind, records, problems = validate(path)
    status, details = "processed", None
    if problems:
        status, details = "error", describe(problems, records)
    elif records == 0:
        status, details = "error", "the file holds no records"
    row = FileRow(id=file_id, created_at=int(time.time()), filename=label(filename), bytes=path.stat().st_size,
                  purpose=purpose, stored=stored, status=status, status_details=details, kind=kind or None,
                  records=records, problems=problems)
    return store.add_file(row)


def validate(path: Path) -> tuple[str, int, list[dict]]:
    """(kind, records read, problems) by the prepare stage's validator, with its codes and lines."""
    validator = Validator("auto", Columns())
    records, problems = 0, []
    for item in validator.check(path):
        records += 0 if item.whole_file else 1
        problems += [{"line": item.line, "code": prob.code, "message": prob.message} for prob in item.problems]
    return validator.kind, records, problems


def describe(problems: list[dict], records: int | None = None) -> str:
    """'2 of 40 lines are bad: line 4: invalid_json: ...; line 9: ...' (the first few)."""
    whole = [p for p in problems if not p["line"]]
    if whole:
        return f"the file cannot be read: {whole[0]['code']}: {whole[0]['message']}"
    bad = len({p["line"] for p in problems})
    head = "; ".join(f"line {p['line']}: {p['code']}: {p['message']}" for p in problems[:SHOWN_PROBLEMS])
    rest = len(problems) - SHOWN_PROBLEMS
    of = f" of {records}" if records else ""
    return (f"{bad}{of} {'line is' if bad == 1 else 'lines are'} bad: {head}"
            + (f"; and {rest} more" if rest > 0 else ""))
