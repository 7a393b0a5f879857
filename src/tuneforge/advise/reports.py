"""Read the artifacts other stages wrote (prepare's report.json, eval's eval.json), checked.

Advise reads only these files, never another stage's code. Each reader returns the parts it
needs and a list of problems (a missing file, bad JSON, a missing or mistyped key), so a
command can report every problem with every input at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem

# key -> (type, what it should be); only what advise reads
PREPARE_KEYS = {"records_in": (int, "a whole number"), "records_out": (int, "a whole number"),
                "splits": (dict, "a mapping of split names to counts"),
                "duplicates": (dict, "a mapping with exact and near counts"),
                "contradiction_records": (int, "a whole number"), "labels": (dict, "a mapping of labels to counts")}
EVAL_KEYS = {"task": (str, "text"), "main_metric": (str, "text"), "variants": (dict, "a mapping of variants")}


def _load(path: Path, file_name: str, stage: str, keys: dict[str, tuple[type, str]]
          ) -> tuple[dict[str, Any] | None, str, list[Problem]]:
    """The JSON object at `path` (or `path/file_name`) with `keys` of the right types, or problems."""
    path = path / file_name if path.is_dir() else path
    where = str(path)
    how = f"pass the {file_name} that `tuneforge {stage}` wrote"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, where, [Problem("file_not_found", f"no such file; {how} (or its folder)", where)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, where, [Problem("unreadable_report", f"cannot read it ({type(exc).__name__})", where)]
    except json.JSONDecodeError as exc:
        return None, where, [Problem("invalid_report", f"not valid JSON ({exc.msg} at line {exc.lineno}); {how}",
                                     where)]
    if not isinstance(data, dict):
        return None, where, [Problem("invalid_report", f"expected a JSON object, as `tuneforge {stage}` writes",
                                     where)]
    problems = []
    for key, (kind, what) in keys.items():
        value = data.get(key)
        # bool is an int in Python; a report never holds true where it holds a count
        if not isinstance(value, kind) or isinstance(value, bool):
            state = "missing" if key not in data else f"{value!r}, not {what}"
            problems.append(Problem("invalid_report", f"'{key}' is {state}; is this the report `tuneforge {stage}` "
                                    "wrote?", where))
    return (None if problems else data), where, problems


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def prepare_report(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """What decide needs from a prepare report.json (or its folder)."""
    data, where, problems = _load(path, "report.json", "prepare", PREPARE_KEYS)
    if data is None:
        return None, problems
    if not _count(data["splits"].get("train")):
        problems.append(Problem("invalid_report", "'splits.train' is missing or not a count", where))
    if not all(_count(data["duplicates"].get(k)) for k in ("exact", "near")):
        problems.append(Problem("invalid_report", "'duplicates' needs exact and near counts", where))
    if not all(isinstance(k, str) and _count(v) for k, v in data["labels"].items()):
        problems.append(Problem("invalid_report", "'labels' must map each label to a count", where))
    if data.get("status") == "failed":
        problems.append(Problem("report_failed", "this prepare run failed, so its counts are not a dataset; fix the "
                                "problems it lists and prepare again", where))
    return (None if problems else data), problems


def eval_report(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """An eval.json (or its folder) whose variants each hold their metrics."""
    data, where, problems = _load(path, "eval.json", "eval", EVAL_KEYS)
    if data is None:
        return None, problems
    bad = [name for name, values in data["variants"].items() if not isinstance(values, dict)]
    if bad or not data["variants"]:
        problems.append(Problem("invalid_report", "'variants' must map each variant name to its metrics"
                                + (f" ({', '.join(bad)} do not)" if bad else ""), where))
    return (None if problems else data), problems


def metric(values: dict[str, Any], name: str) -> float | None:
    value = values.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
