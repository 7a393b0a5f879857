"""Task metrics: plain functions over generated texts and references, no model code.

Each task function returns numbers in 0..1 keyed by metric name, so variants can be compared side
by side and checked with --fail-if (`sql` also returns `per_example`, because running the queries
again per example would double the cost). `example_score` gives one number per example so the
report can sort the worst examples and find the ones that flipped between variants.
"""

from __future__ import annotations

import json
import re
import sqlite3
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError, fail

INVALID = "(invalid)"  # name of the confusion-matrix column for generations that match no label
TASKS = ("classification", "extraction", "generation", "sql")

_QUOTES = "\"'`“”‘’«»„"
_EDGES = string.punctuation + _QUOTES + string.whitespace


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def _same_length(preds: list, refs: list) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")


# --- classification ----------------------------------------------------------------------------

def _squash(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


def match_label(text: str | None, labels: list[str]) -> str | None:
    """The label a free-form generation names, or None when it names none (or several).

    Exact after folding case, whitespace, `_` vs space and surrounding quotes/punctuation
    ("Billing." and '"feature request"' match); otherwise the label the text starts with as a
    whole word ("billing - the user was charged twice"). Nested labels ("account" and
    "account locked") are not ambiguous as prefixes: the longest wins.
    """
    if text is None:
        return None
    if text.strip() in labels:
        return text.strip()
    folded = _squash(text)
    # Strip the text a step at a time, so a label such as "c++" matches itself before "c" does;
    # last, strip the labels too, for labels such as "yes." written without the period.
    stripped = folded.strip(_EDGES)
    for matches in (lambda form: form == folded, lambda form: form == folded.strip(_QUOTES + " "),
                    lambda form: form == stripped, lambda form: form.strip(_EDGES) == stripped):
        found = [label for label in labels if matches(_squash(label))]
        if len(found) == 1:
            return found[0]
        if found:  # labels that differ only in case or spacing: refuse to guess
            return None
    head = folded.lstrip(_EDGES)
    best: list[str] = []
    best_len = 0
    for label in labels:
        form = _squash(label).lstrip(_EDGES)
        rest = head[len(form):]
        if form and head.startswith(form) and (not rest or not rest[0].isalnum()):
            if len(form) > best_len:
                best, best_len = [label], len(form)
            elif len(form) == best_len:
                best.append(label)
    return best[0] if len(best) == 1 else None


def classification(preds: list[str | None], refs: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1, per-class scores and the confusion matrix; preds are matched labels or None.

    per_class and the confusion matrix cover every given label (plus any label seen only in the
    data), so their shape is the same for every variant; macro F1 averages only the labels that
    occur in refs or preds, because a label nobody used says nothing about the model.
    The matrix has rows = reference, columns = predicted, and a last column for invalid (None).
    """
    _same_length(preds, refs)
    names = list(dict.fromkeys([*labels, *refs, *(p for p in preds if p is not None)]))
    col = {name: i for i, name in enumerate(names)}
    matrix = [[0] * (len(names) + 1) for _ in names]
    for pred, ref in zip(preds, refs):
        matrix[col[ref]][len(names) if pred is None else col[pred]] += 1
    per_class = {}
    used = []
    for i, name in enumerate(names):
        tp, predicted, support = matrix[i][i], sum(row[i] for row in matrix), sum(matrix[i])
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        per_class[name] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                           "support": support}
        if predicted or support:
            used.append(per_class[name]["f1"])
    n = len(refs)
    return {
        "accuracy": _ratio(sum(p == r for p, r in zip(preds, refs)), n),
        "macro_f1": _ratio(sum(used), len(used)),
        "invalid_rate": _ratio(sum(p is None for p in preds), n),
        "per_class": per_class,
        "confusion": {"labels": names, "matrix": matrix},
    }


# --- extraction --------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[ \t]*(\w*)[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)


def _unfence(text: str, language: str) -> str:
    text = text.strip()
    match = _FENCE.match(text)
    if match and match.group(1).lower() in ("", language):
        return match.group(2).strip()
    return text


def parse_json_object(text: str | None) -> dict | None:
    """The JSON object in `text` (surrounding whitespace and a ```json fence allowed), else None."""
    if text is None:
        return None
    try:
        value = json.loads(_unfence(text, "json"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _canon(value: Any) -> Any:
    """Strings stripped and case-folded, 2.0 == 2, recursively; so formatting is not scored."""
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def _pairs(obj: dict | None) -> set[tuple[str, str]]:
    """Top-level (key, value) pairs; nested values compare as a whole."""
    if obj is None:
        return set()
    return {(k, json.dumps(_canon(v), sort_keys=True, ensure_ascii=False)) for k, v in obj.items()}


def _reference_objects(refs: list[str]) -> list[dict]:
    objects = [parse_json_object(r) for r in refs]
    bad = [Problem("invalid_reference", "the reference output is not a JSON object; fix the test data",
                   f"test example {i}") for i, obj in enumerate(objects) if obj is None]
    if bad:
        raise TuneforgeError(bad)
    return objects  # type: ignore[return-value]


def extraction(preds: list[str | None], refs: list[str]) -> dict[str, float]:
    """JSON validity, exact match, field-level micro precision/recall/F1 and schema compliance."""
    _same_length(preds, refs)
    gold = _reference_objects(refs)
    parsed = [parse_json_object(p) for p in preds]
    tp = n_pred = n_ref = 0
    for obj, ref in zip(parsed, gold):
        got, want = _pairs(obj), _pairs(ref)
        tp, n_pred, n_ref = tp + len(got & want), n_pred + len(got), n_ref + len(want)
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_ref)
    n = len(refs)
    return {
        "json_valid_rate": _ratio(sum(obj is not None for obj in parsed), n),
        # Compared as pairs, not with ==, so that true and 1 differ here as they do in the field scores.
        "exact_match": _ratio(sum(obj is not None and _pairs(obj) == _pairs(ref)
                                  for obj, ref in zip(parsed, gold)), n),
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": _f1(precision, recall),
        "schema_compliance": _ratio(sum(obj is not None and obj.keys() == ref.keys()
                                        for obj, ref in zip(parsed, gold)), n),
    }


def field_f1(pred: str | None, ref: str) -> float:
    """Field F1 of one extraction; 1.0 exactly when the objects match, so it refines exact match."""
    got, want = _pairs(parse_json_object(pred)), _pairs(_reference_objects([ref])[0])
    if not got and not want:
        return 1.0 if parse_json_object(pred) is not None else 0.0
    return _f1(_ratio(len(got & want), len(got)), _ratio(len(got & want), len(want)))


# --- generation --------------------------------------------------------------------------------

def _words(text: str | None) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def rouge_l(pred: str | None, ref: str) -> float:
    """ROUGE-L F-measure (beta 1) on lower-cased word tokens; punctuation is not a token."""
    a, b = _words(pred), _words(ref)
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:  # longest common subsequence, two rows at a time
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    return _f1(lcs / len(a), lcs / len(b))


def _same_text(pred: str | None, ref: str) -> bool:
    return " ".join((pred or "").split()).casefold() == " ".join(ref.split()).casefold()


def generation(preds: list[str | None], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-L, corpus chrF (sacrebleu, scaled to 0..1) and whitespace/case-folded exact match."""
    _same_length(preds, refs)
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise TuneforgeError(Problem("missing_dependency",
                                     "chrF needs sacrebleu: pip install 'sacrebleu>=2.4,<3'")) from None
    n = len(refs)
    texts = [p or "" for p in preds]
    return {
        "rouge_l": _ratio(sum(rouge_l(p, r) for p, r in zip(texts, refs)), n),
        "chrf": CHRF().corpus_score(texts, [refs]).score / 100 if n else 0.0,
        "exact_match": _ratio(sum(_same_text(p, r) for p, r in zip(texts, refs)), n),
    }


# --- sql ---------------------------------------------------------------------------------------

def open_db(db_path: str | Path) -> sqlite3.Connection:
    """Open the SQLite file read-only so generated SQL cannot change it; ATTACH is refused too,
    because it would let a query create files elsewhere."""
    path = Path(db_path)
    if not path.is_file():
        raise fail("sql_db_not_found", "no SQLite database file here; give the path of the .db/.sqlite file", str(path))
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise fail("sql_db_not_found", f"cannot read this file as a SQLite database ({err})", str(path)) from None

    def authorize(action: int, *_: Any) -> int:
        return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)
    return conn


def clean_sql(text: str | None) -> str:
    """Strip a ```sql fence, surrounding space and trailing semicolons."""
    return _unfence(text or "", "sql").rstrip().rstrip(";").rstrip()


def run_query(conn: sqlite3.Connection, query: str, timeout_s: float = 5.0) -> list[tuple]:
    """All result rows; sqlite3.Error (OperationalError "interrupted" past the time limit) on failure."""
    deadline = time.monotonic() + timeout_s
    # Checked every 1000 VM steps: a runaway recursive CTE is stopped within milliseconds of the limit.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(clean_sql(query))
        if cursor.description is None:  # empty text, a comment, or a statement that is not a query
            raise sqlite3.OperationalError("not a query: it returns no columns")
        rows = cursor.fetchall()
    finally:
        conn.set_progress_handler(None, 0)
    # Rounded so that two correct ways to compute an average do not differ in the 15th digit.
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def same_rows(got: list[tuple], want: list[tuple], ordered: bool) -> bool:
    return got == want if ordered else Counter(got) == Counter(want)


def sql(preds: list[str | None], refs: list[str], db_path: str | Path, timeout_s: float = 5.0) -> dict[str, Any]:
    """Execution rate and execution accuracy against a SQLite database, plus `per_example`.

    Results compare as a multiset of rows (column order matters), in order only when the reference
    has ORDER BY. A reference that fails to run is an error in the test data, reported, not scored.
    per_example: [{"executed": bool, "correct": bool, "error": str | None}] in input order.
    """
    _same_length(preds, refs)
    conn = open_db(db_path)
    try:
        wanted, bad = [], []
        for i, ref in enumerate(refs):
            try:
                wanted.append(run_query(conn, ref, timeout_s))
            except sqlite3.Error as err:
                bad.append(Problem("sql_reference_error", f"the reference query fails: {err}", f"test example {i}"))
        if bad:
            raise TuneforgeError(bad)
        per_example = []
        for pred, ref, want in zip(preds, refs, wanted):
            try:
                got = run_query(conn, pred or "", timeout_s)
            except sqlite3.Error as err:
                per_example.append({"executed": False, "correct": False, "error": str(err)})
                continue
            per_example.append({"executed": True, "correct": same_rows(got, want, bool(_ORDER_BY.search(ref))),
                                "error": None})
    finally:
        conn.close()
    n = len(refs)
    return {
        "exec_rate": _ratio(sum(e["executed"] for e in per_example), n),
        "exec_accuracy": _ratio(sum(e["correct"] for e in per_example), n),
        "per_example": per_example,
    }


# --- one example -------------------------------------------------------------------------------

def example_score(task: str, pred: str | None, ref: str, **ctx: Any) -> float:
    """One example's score in 0..1, for sorting the worst examples and finding flips.

    classification: 1/0 (pass `labels=` to match a raw generation first); extraction: field F1
    (1.0 exactly on an exact match, partial credit otherwise); generation: ROUGE-L; sql: 1/0 on the
    execution match (pass `db_path=`, or `correct=` from `sql()`'s per_example to avoid re-running).
    """
    if task == "classification":
        if "labels" in ctx:
            pred = match_label(pred, ctx["labels"])
        return float(pred == ref)
    if task == "extraction":
        return field_f1(pred, ref)
    if task == "generation":
        return rouge_l(pred, ref)
    if task == "sql":
        if "correct" in ctx:
            return float(ctx["correct"])
        return float(sql([pred], [ref], ctx["db_path"], ctx.get("timeout_s", 5.0))["exec_accuracy"])
    raise fail("unknown_task", f"no metrics for task {task!r}; tasks with metrics: {', '.join(TASKS)}")
