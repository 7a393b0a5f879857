"""Read prepared datasets (the prepare stage's artifact) and turn them into training examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.train.collate import IGNORE, EncodeStats, Encoder, Example


def read_prepared(folder: Path) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """(report, train records, val records) of a folder written by `tuneforge prepare`."""
    report_path = folder / "report.json"
    if not (folder / "train.jsonl").exists() or not report_path.exists():
        raise TuneforgeError(Problem("not_prepared", "no train.jsonl/report.json here; run `tuneforge prepare` "
                                     "first and pass its --out folder", str(folder)))
    report = json.loads(report_path.read_text())
    if report.get("status") != "ok":
        raise TuneforgeError(Problem("not_prepared", "the last prepare of this folder failed; fix the data and "
                                     "prepare again", str(folder)))

    def rows(name: str) -> list[dict]:
        path = folder / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    return report, rows("train.jsonl"), rows("val.jsonl")


def mix(parts: list[tuple[list[dict], float]], seed: int) -> list[dict]:
    """Multi-task mixing: draw from each dataset in proportion to its weight; the mixed
    set has as many examples as all datasets together, and a dataset drawn more often
    than it has examples is repeated (sampled with replacement)."""
    rng = np.random.default_rng(seed)
    total = sum(len(rows) for rows, _ in parts)
    weight_sum = sum(w for _, w in parts)
    mixed: list[dict] = []
    for rows, weight in parts:
        want = int(round(total * weight / weight_sum))
        if not rows or want == 0:
            continue
        picks = rng.choice(len(rows), size=want, replace=want > len(rows))
        mixed += [rows[i] for i in picks]
    order = rng.permutation(len(mixed))
    return [mixed[i] for i in order]


def encode(records: list[dict], objective: str, encoder: Encoder) -> list:
    items: list = []
    for rec in records:
        if objective == "dpo":
            pair = encoder.preference(rec)
            if pair is not None:
                items.append(pair)
        elif objective == "pretrain":
            text = rec.get("text") or "\n".join(m["content"] for m in rec["messages"])
            items += encoder.texts(text)
        else:
            example = encoder.chat(rec["messages"])
            if example is not None:
                items.append(example)
    return items


OBJECTIVE_FOR_TASK = {"preference": "dpo", "pretraining": "pretrain"}


def check_objective(objective: str, kinds: set[str]) -> None:
    need = {"dpo": "preference", "sft": "chat"}.get(objective)
    if need and kinds != {need}:
        raise TuneforgeError(Problem(
            "wrong_data_for_objective",
            f"objective {objective} needs {need} records, the data has {', '.join(sorted(kinds))}; "
            "prepare the right data or change objective", "objective"))


def record_kind(rec: dict) -> str:
    if "text" in rec:
        return "text"
    return "preference" if "chosen" in rec else "chat"


def longest(item) -> int:
    """Length of an example, or of the longer side of a preference pair."""
    return max(len(x) for x in item) if isinstance(item, tuple) else len(item)


def _cut(example: Example, limit: int) -> Example | None:
    ids, labels = example.input_ids[:limit], example.labels[:limit]
    return Example(ids, labels) if any(label != IGNORE for label in labels[1:]) else None


def truncate(items: list, limit: int, stats: EncodeStats) -> list:
    """Cut examples (or both sides of pairs) to `limit` tokens, counting what was cut and
    dropping what has no trained token left."""
    kept = []
    for item in items:
        if longest(item) <= limit:
            kept.append(item)
            continue
        stats.truncated += 1
        cut = tuple(_cut(x, limit) for x in item) if isinstance(item, tuple) else _cut(item, limit)
        if cut is None or (isinstance(cut, tuple) and None in cut):
            stats.dropped_no_target += 1
            continue
        kept.append(cut)
    return kept
