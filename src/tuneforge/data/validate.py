"""The record validator: every record of a data file, read, normalised and checked, with its line.

    validator = Validator(fmt="auto", columns=Columns())
    for item in validator.check(Path("tickets.jsonl")):
        if item.record is None:
            print(item.line, [p.code for p in item.problems])

One home for what makes a record good, used by prepare's first pass and by the jobs API's
upload check (tuneforge.jobs.files), so both name the same lines with the same codes. A
table's header is checked once; when it (or the whole file) cannot be read, one item with
`whole_file` stands for every row and nothing follows. The first valid record fixes the
dataset's kind (chat, preference, text) across every file this validator checks; a record of
another kind is `mixed_kinds`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.data.columns import Plan, plan_columns
from tuneforge.data.formats import Columns, Normalised, normalise
from tuneforge.data.readers import Header, read_records
from tuneforge.errors import Problem


@dataclass
class Checked:
    line: int  # 1-based line (or row) of the file; 0 for the file as a whole
    record: Normalised | None = None  # the normalised record when it is valid
    problems: list[Problem] = field(default_factory=list)
    whole_file: bool = False  # the problems stand for the whole file: no rows follow


class Validator:
    def __init__(self, fmt: str, columns: Columns):
        self.fmt, self.columns = fmt, columns
        self.kind = ""  # the dataset's kind, from its first valid record

    def check(self, path: Path, on_plan: Callable[[Plan], None] | None = None) -> Iterator[Checked]:
        """Each record of `path` (the caller has checked its suffix). `on_plan` sees the column
        plan of a table whose header was read."""
        columns = self.columns
        for line, value in read_records(path):
            if isinstance(value, Header):
                plan = None if value.problems else plan_columns(value.names, self.fmt, self.columns)
                problems = list(value.problems) if plan is None else plan.problems
                if plan is None or problems:
                    yield Checked(line, problems=problems, whole_file=True)
                    return
                if on_plan is not None:
                    on_plan(plan)
                columns = plan.columns
                continue
            if isinstance(value, Problem):
                yield Checked(line, problems=[value], whole_file=line == 0)  # line 0: the file cannot be read
                if line == 0:
                    return
                continue
            rec = normalise(value, self.fmt, columns)
            if rec.problems:
                yield Checked(line, problems=rec.problems)
                continue
            self.kind = self.kind or rec.kind
            if rec.kind != self.kind:
                yield Checked(line, problems=[Problem(
                    "mixed_kinds", f"this is a {rec.kind} record but the dataset is {self.kind}; "
                    "prepare each kind of data separately")])
                continue
            yield Checked(line, rec)
