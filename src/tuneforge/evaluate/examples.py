"""The held-out examples an evaluation runs on: which file, which task, which subset.

Everything here is checked before a model loads, so a wrong folder, an empty test split, a task
that does not fit the references or a missing database fails in seconds, not after inference.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge import tasks
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.evaluate.config import EvalConfig


@dataclass
class Examples:
    task: str
    prompts: list[list[dict]]  # messages before the answer
    references: list[str]
    labels: list[str]
    train: list[dict] = field(default_factory=list)  # for few-shot
    source: str = ""  # the file the examples came from


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TuneforgeError(Problem("invalid_json", f"{exc.msg}; eval data must be prepared chat records",
                                         f"{path}:{number}")) from None
    return rows


def split_record(rec: dict, where: str) -> tuple[list[dict], str]:
    """(prompt messages, reference answer) of a chat record that ends with the assistant's answer."""
    messages = rec.get("messages") if isinstance(rec, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise TuneforgeError(Problem("no_assistant_turn", "each eval record needs messages ending with the "
                                     "assistant's reference answer; run `tuneforge prepare` on the file", where))
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]


def _test_file(folder: Path) -> Path:
    """The test split of a prepared folder. Never the validation split: it chose the best checkpoint,
    so scores on it flatter the fine-tune; whoever wants them anyway passes --data FOLDER/val.jsonl."""
    test = folder / "test.jsonl"
    if not test.exists():
        raise TuneforgeError(Problem("not_prepared", "no test split here; pass a folder written by `tuneforge "
                                     "prepare` or a JSONL file of chat records with --data FILE", str(test)))
    return test


def _answers(rows: list[tuple[int, dict]]) -> list[str]:
    found = []
    for _, rec in rows:
        try:
            found.append(split_record(rec, "")[1])
        except TuneforgeError:
            continue
    return found


def choose_task(cfg: EvalConfig, refs: list[str], report: dict[str, Any], train_rows: list[tuple[int, dict]]) -> str:
    """--task when given (checked against the data), else prepare's decision, else detected from refs."""
    if cfg.task != "auto":
        # judged on all the data prepare saw where there is a train split: a small test split
        # repeats its labels less than the dataset does
        return tasks.resolve(cfg.task, "chat", tasks.tally(refs + _answers(train_rows)))
    if report.get("task") in tasks.TASKS:
        return report["task"]
    return tasks.decide(tasks.tally(refs))


def sample(refs: list[str], limit: int | None, seed: int, stratify: bool) -> list[int]:
    """Indices of `limit` examples drawn with `seed`, in file order (all when there are fewer).

    Stratified: each label keeps its share of the sample (largest remainder, ties broken by the
    seed), so a file sorted by label still gives every label its place."""
    n = len(refs)
    if limit is None or limit >= n:
        return list(range(n))
    rng = random.Random(seed)
    if not stratify:
        return sorted(rng.sample(range(n), limit))
    groups: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        groups.setdefault(ref, []).append(i)
    share = {label: limit * len(members) / n for label, members in groups.items()}
    take = {label: math.floor(q) for label, q in share.items()}
    order = sorted(groups)
    rng.shuffle(order)
    order.sort(key=lambda label: -(share[label] - take[label]))  # stable: equal remainders stay shuffled
    for label in order[: limit - sum(take.values())]:
        take[label] += 1
    return sorted(i for label in sorted(groups) for i in rng.sample(groups[label], take[label]))


def _check_references(task: str, refs: list[str], wheres: list[str]) -> None:
    bad = [Problem("invalid_reference", f"the reference answer is not {tasks.WANTS[task]}, which every {task} "
                   "example needs; fix or drop it", where)
           for ref, where in zip(refs, wheres) if not tasks.answer_fits(task, ref)]
    if bad:
        raise TuneforgeError(bad)


def load_examples(cfg: EvalConfig) -> Examples:
    data = Path(cfg.data)
    report: dict[str, Any] = {}
    train_rows: list[tuple[int, dict]] = []
    if data.is_dir():
        if (data / "report.json").exists():
            report = json.loads((data / "report.json").read_text())
        source = _test_file(data)
        rows = read_jsonl(source)
        if not rows:
            raise TuneforgeError(Problem(
                "empty_test_split", "the test split is empty; re-run `tuneforge prepare` with a test share "
                "(e.g. --split 0.8,0.1,0.1) or pass a file with --data FILE (val.jsonl chose the best checkpoint, "
                "so scores on it are optimistic)", str(source)))
        if (data / "train.jsonl").exists():
            train_rows = read_jsonl(data / "train.jsonl")
    elif data.is_file():
        source, rows = data, read_jsonl(data)
        if not rows:
            raise TuneforgeError(Problem("no_examples", "nothing to evaluate: the file has no records", str(data)))
    else:
        raise TuneforgeError(Problem("file_not_found", "no such file or folder", str(data)))
    wheres = [f"{source}:{line}" for line, _ in rows]
    split = [split_record(rec, where) for (_, rec), where in zip(rows, wheres)]
    refs = [ref for _, ref in split]
    task = choose_task(cfg, refs, report, train_rows)
    _check_references(task, refs, wheres)
    if task == "sql":
        if cfg.sql_db is None:
            raise TuneforgeError(Problem("sql_db_missing", "the sql task runs queries: pass --sql-db FILE (SQLite)",
                                         "--sql-db"))
        from tuneforge.evaluate.sqlexec import check_db

        check_db(cfg.sql_db)
    labels = sorted(set(report.get("labels") or {}) | set(refs)) if task == "classification" else []
    keep = sample(refs, cfg.limit, cfg.seed, stratify=task == "classification")
    return Examples(task, [split[i][0] for i in keep], [refs[i] for i in keep], labels,
                    [rec for _, rec in train_rows], str(source))
