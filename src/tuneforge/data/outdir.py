"""The prepare output folder: checked before any reading, written without leaving debris.

Besides the checks every stage makes (tuneforge.outdir), prepare's --out must not hold an
input, since train/val/test.jsonl written there could replace the user's raw data.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError

OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "report.json", "report.md")
writing = outdir.writing


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out(out: Path, inputs: list[Path]) -> list[Problem]:
    """Problems with `out`, found before anything is read."""
    problems = outdir.check_out(out)
    if problems or not out.exists():
        return problems  # a new folder holds nothing yet
    for path in inputs:
        if _same(path.parent, out):
            clash = "; prepare would overwrite it with the cleaned split" if path.name in OUTPUTS else ""
            problems.append(Problem(
                "out_holds_input", f"the output folder holds the input file {path}{clash}; prepare writes "
                f"{', '.join(OUTPUTS)} there, so choose a separate --out folder", str(out)))
    return problems


def make_out(out: Path) -> None:
    """Create `out` (check_out has shown that a file can be written there)."""
    with writing(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TuneforgeError(Problem("out_not_writable", f"cannot make the output folder ({exc.strerror}); "
                                         "choose another --out", str(out))) from None


def remove_debris(out: Path) -> None:
    """Delete the spool and half-written files a failed run leaves in `out`."""
    for path in [out / ".prepare-spool.jsonl", *out.glob(".*.jsonl.tmp"), *out.glob("report.*.tmp")]:
        path.unlink(missing_ok=True)
