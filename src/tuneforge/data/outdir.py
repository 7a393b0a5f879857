"""The prepare output folder: checked before any reading, written without leaving debris.

Checks run before the tokenizer loads and the inputs are read, so a wrong --out costs
nothing: it must not be (or sit under) a file, must be writable, and must not hold an
input, since train/val/test.jsonl written there could replace the user's raw data.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import Problem, TuneforgeError

OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "report.json", "report.md")
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out(out: Path, inputs: list[Path]) -> list[Problem]:
    """Problems with `out` that can be seen without writing anything."""
    where = str(out)
    if out.exists() and not out.is_dir():
        return [Problem("out_not_a_folder", "--out is an existing file; give a folder (new or existing)", where)]
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [Problem("out_not_a_folder", f"--out lies under {parent}, which is a file, not a folder", where)]
    if not out.exists():
        return []  # a new folder holds nothing yet
    problems = []
    for path in inputs:
        if _same(path.parent, out):
            clash = "; prepare would overwrite it with the cleaned split" if path.name in OUTPUTS else ""
            problems.append(Problem(
                "out_holds_input", f"the output folder holds the input file {path}{clash}; prepare writes "
                f"{', '.join(OUTPUTS)} there, so choose a separate --out folder", where))
    return problems


def make_out(out: Path) -> None:
    """Create `out` and prove a file can be written in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise TuneforgeError(_problem(exc, out)) from None


def _problem(exc: OSError, path: Path) -> Problem:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path)
    if exc.errno in _UNWRITABLE:
        return Problem("out_not_writable", "cannot write in the output folder (permission denied or a read-only "
                       "disk); choose another --out", str(path))
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return Problem("out_not_a_folder", "--out or a folder above it is a file; give a folder", str(path))
    return Problem("out_not_writable", f"cannot write in the output folder ({exc.strerror}); choose another --out",
                   str(path))


def disk_full(path: Path | str) -> Problem:
    # the same wording as the CLI's generic handler, for errors raised from the library too
    return Problem("disk_full", f"no space left on device (writing {path}); free space and run again")


@contextmanager
def writing(what: Path | str) -> Iterator[None]:
    """Turn a full disk while writing `what` into a `disk_full` error that names it (a failed
    write() carries no file name of its own)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TuneforgeError(disk_full(what)) from None
        raise


def remove_debris(out: Path) -> None:
    """Delete the spool and half-written files a failed run leaves in `out`."""
    for path in [out / ".prepare-spool.jsonl", *out.glob(".*.jsonl.tmp"), *out.glob("report.*.tmp")]:
        path.unlink(missing_ok=True)
