"""Which task a dataset is: one set of rules for prepare and eval.

prepare streams millions of records, so the rules work on counts: a `Tally` is fed one answer
at a time (prepare's first pass, or eval's references) and `resolve` turns it into a task,
either detected or the one asked for with --task, checked against the data. Both stages call
the same per-answer predicates, so an answer prepare counts as SQL is one eval can execute and
a JSON array prepare counts as extraction is one eval can score.

What each task accepts:
- extraction: answers that are a JSON object or a JSON array (a list of records), at least 90%
  of them; a few odd answers in a training set are noise, not a different task.
- sql: answers that are one SQLite statement, at least 90% of them: a query (SELECT, WITH,
  VALUES), scored by the rows it returns, or a change (INSERT, REPLACE, UPDATE, DELETE), scored
  by the tables it leaves behind on a copy of the database. Schema changes (CREATE, DROP) are
  generation: there is no one right table state to compare them with.
- classification: every answer a short label (at most 64 characters, at most 200 different
  ones), repeated: detection wants at least 2 labels and 3 answers per label on average;
  --task classification is allowed down to 2 per label.
- generation: anything.
Detection tries extraction, sql, classification, then generation: the shape of an answer says
more than its repetition (a templated query repeated 5 times is still SQL).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import dataclass, field

from tuneforge.errors import Problem, TuneforgeError

TASKS = ("classification", "extraction", "generation", "sql")  # tasks of chat records, with eval metrics
LABEL_CAP = 200
MAX_LABEL_CHARS = 64
SHAPE_SHARE = 0.9  # extraction/sql: share of answers that must have the shape
AUTO_PER_LABEL = 3  # detection: answers per label on average
ASKED_PER_LABEL = 2  # --task classification: answers per label on average

_FENCE = re.compile(r"^```[ \t]*(\w*)[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)
_COMMENTS = re.compile(r"^(?:\s*(?:--[^\n]*(?:\n|$)|/\*.*?\*/))*\s*", re.DOTALL)
_QUERY = {"select", "with", "values"}
_CHANGE = {"insert", "replace", "update", "delete"}
# WITH ... AS (...) INSERT/UPDATE/DELETE: a change behind common table expressions
_CTE_CHANGE = re.compile(r"\)\s*(insert|replace|update|delete)\b", re.IGNORECASE)
_SYNTAX = ("syntax error", "incomplete input", "unrecognized token")


def unfence(text: str, language: str) -> str:
    """The text inside a ``` fence (bare or tagged `language`), else the text, stripped."""
    text = text.strip()
    match = _FENCE.match(text)
    if match and match.group(1).lower() in ("", language):
        return match.group(2).strip()
    return text


def parse_json_output(text: str | None) -> dict | list | None:
    """The JSON object or array an answer is (whitespace and a ```json fence allowed), else None."""
    if text is None:
        return None
    body = unfence(text, "json")
    if body[:1] not in ("{", "["):  # most answers are not JSON: skip the parser
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def is_json_output(text: str | None) -> bool:
    return parse_json_output(text) is not None


def clean_sql(text: str | None) -> str:
    """Strip a ```sql fence, surrounding space and trailing semicolons."""
    return unfence(text or "", "sql").rstrip().rstrip(";").rstrip()


_local = threading.local()


def _parses(statement: str) -> bool:
    """True when SQLite parses `statement` as one statement. EXPLAIN compiles without running,
    against an empty database, so unknown tables are fine and only syntax fails; this is what
    tells "Select the best plan for me." from a query."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(":memory:")
    try:
        conn.execute("EXPLAIN " + statement)
    except sqlite3.OperationalError as err:
        return not str(err).startswith(_SYNTAX) and "syntax error" not in str(err)
    except (sqlite3.Error, sqlite3.Warning):  # several statements, or nothing to run
        return False
    return True


def sql_kind(text: str | None) -> str | None:
    """"query" or "change" for one SQLite statement of the sql task (see the module doc), else None."""
    statement = clean_sql(text)
    body = _COMMENTS.sub("", statement, count=1)
    word = body.split(None, 1)[0].lower() if body else ""
    if word not in _QUERY | _CHANGE or not _parses(statement):
        return None
    if word in _CHANGE or (word == "with" and _CTE_CHANGE.search(body)):
        return "change"
    return "query"


def is_sql(text: str | None) -> bool:
    return sql_kind(text) is not None


def answer_fits(task: str, answer: str) -> bool:
    """Whether one reference answer can be scored as `task` (eval refuses the others up front)."""
    if task == "extraction":
        return is_json_output(answer)
    if task == "sql":
        return is_sql(answer)
    if task == "classification":
        return len(answer.strip()) <= MAX_LABEL_CHARS
    return True


WANTS = {"extraction": "a JSON object or array", "sql": "one SQLite query or INSERT/REPLACE/UPDATE/DELETE statement",
         "classification": f"a label of at most {MAX_LABEL_CHARS} characters"}


@dataclass
class Tally:
    """Counts over the answers of a dataset, fed one at a time."""

    n: int = 0
    json: int = 0
    sql: int = 0
    long: int = 0  # answers too long to be a label
    labels: dict[str, int] = field(default_factory=dict)  # label -> id, first seen first
    per_label: list[int] = field(default_factory=list)  # answers per label id

    def add(self, answer: str) -> int:
        """Count one answer; returns its label id, or -1 when it cannot be a label."""
        text = answer.strip()
        self.n += 1
        if is_json_output(text):
            self.json += 1
        elif is_sql(text):
            self.sql += 1
        if len(text) > MAX_LABEL_CHARS:
            self.long += 1
            return -1
        label = self.labels.get(text)
        if label is None:
            if len(self.labels) >= LABEL_CAP:
                return -1
            label = self.labels[text] = len(self.labels)
            self.per_label.append(0)
        self.per_label[label] += 1
        return label

    @property
    def labelled(self) -> int:
        return sum(self.per_label)


def tally(answers) -> Tally:
    found = Tally()
    for answer in answers:
        found.add(answer)
    return found


def _pct(part: int, whole: int) -> str:
    return f"{round(100 * part / whole)}%" if whole else "0%"


def _shape_share(count: int, n: int) -> bool:
    return n > 0 and count >= SHAPE_SHARE * n


def decide(t: Tally) -> str:
    """The task the answers look like."""
    if _shape_share(t.json, t.n):
        return "extraction"
    if _shape_share(t.sql, t.n):
        return "sql"
    distinct = len(t.labels)
    if t.n and t.labelled == t.n and distinct >= 2 and distinct * AUTO_PER_LABEL <= t.n:
        return "classification"
    return "generation"


def mismatch(task: str, t: Tally) -> str | None:
    """Why answers counted in `t` cannot be `task` (the message for an asked-for task), or None."""
    if t.n == 0 or task not in TASKS:
        return None
    if task in ("extraction", "sql"):
        count = t.json if task == "extraction" else t.sql
        if not _shape_share(count, t.n):
            return (f"--task {task} needs answers that are {WANTS[task]} (at least {SHAPE_SHARE:.0%}); "
                    f"{_pct(count, t.n)} of {t.n} answers are")
        return None
    if task != "classification":
        return None
    if t.long:
        return (f"--task classification needs short labels (at most {MAX_LABEL_CHARS} characters); "
                f"{_pct(t.long, t.n)} of {t.n} answers are longer; use --task generation")
    if t.labelled < t.n:
        return f"--task classification allows at most {LABEL_CAP} different labels; these answers have more"
    if len(t.labels) * ASKED_PER_LABEL > t.n:
        unique = sum(1 for c in t.per_label if c == 1)
        return (f"--task classification needs short repeated labels; {_pct(unique, t.n)} of answers are unique "
                f"({len(t.labels)} different answers among {t.n}, want at most {t.n // ASKED_PER_LABEL}); "
                "use --task generation")
    return None


def resolve(requested: str, kind: str, t: Tally, where: str = "--task") -> str:
    """The task for a dataset of `kind` records ("chat", "text", "preference"; "" when empty):
    detected when `requested` is "auto", else `requested` once it fits (task_mismatch if not)."""
    natural = {"text": "pretraining", "preference": "preference"}.get(kind)
    if requested == "auto":
        return natural or decide(t)
    if not kind or requested in (natural, "pretraining"):  # continued pre-training reads any text
        return requested
    if natural or requested == "preference":
        need = ("preference records (chosen/rejected)" if requested == "preference"
                else "chat records ending in the answer")
        raise TuneforgeError(Problem("task_mismatch", f"--task {requested} needs {need}; these are {kind} records",
                                     where))
    reason = mismatch(requested, t)
    if reason:
        raise TuneforgeError(Problem("task_mismatch", reason, where))
    return requested


def warnings(task: str, t: Tally) -> list[str]:
    """Answers that do not fit a task chosen by majority: fine to train on, refused as eval references."""
    count = {"extraction": t.json, "sql": t.sql}.get(task)
    if count is None or count == t.n:
        return []
    return [f"{t.n - count} of {t.n} answers are not {WANTS[task]}; eval refuses such answers as references, "
            "so fix or drop them before they reach the test split"]
