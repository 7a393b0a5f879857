"""Task metrics: plain functions over generated texts and references, no model code.

Each task function returns numbers in 0..1 keyed by metric name, so variants can be compared side
by side and checked with --fail-if (`sql` also returns `per_example`, because running the queries
again per example would double the cost). The names are declared on each function (`@returns`) and
collected in TASK_METRICS, so the list that --fail-if is checked against cannot drift from the code.
`example_score` gives one number per example so the report can sort the worst examples and find the
ones that flipped between variants.
"""

from __future__ import annotations

import json
import re
import sqlite3
import string
from collections import Counter
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError, fail
from tuneforge.evaluate.sqlexec import Scratch, open_db, ordered, run_query, same_rows  # noqa: F401 (re-exported)
from tuneforge.tasks import TASKS, clean_sql, parse_json_output, sql_kind  # noqa: F401 (re-exported)


INVALID = "(invalid)"  # name of the confusion-matrix column for generations that match no label
# Computed in evaluate/run.py for every task / for classification; here so all names live together.
RUN_METRICS = ("perplexity", "latency_ms_p50", "tokens_per_s", "examples_per_s")
CONSTRAINED_METRICS = ("accuracy_constrained", "macro_f1_constrained")
LOWER_IS_BETTER = frozenset({"invalid_rate", "perplexity", "latency_ms_p50"})

_QUOTES = "\"'`“”‘’«»„"
_EDGES = string.punctuation + _QUOTES + string.whitespace


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def returns(*names: str):
    """Declare the metric names a task function returns, next to the function."""
    def mark(fn):
        fn.metric_names = names
        return fn
    return mark


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


@returns("accuracy", "macro_f1", "invalid_rate")
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

def parse_json_object(text: str | None) -> dict | None:
    """The JSON object in `text` (surrounding whitespace and a ```json fence allowed), else None."""
    value = parse_json_output(text)
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


def _pairs(value: dict | list | None) -> Counter:
    """The fields of an extraction: an object's top-level (key, value) pairs, or an array's items
    (a list of records: each item is one field, matched whole); nested values compare as a whole.
    Array items are keyed None, which no object key can be, so an object never matches an array."""
    if value is None:
        return Counter()
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    return Counter((k, json.dumps(_canon(v), sort_keys=True, ensure_ascii=False)) for k, v in items)


def _shape(value: Any) -> Any:
    return frozenset(value) if isinstance(value, dict) else type(value).__name__


def _complies(value: dict | list | None, ref: dict | list) -> bool:
    """Same keys for an object; for an array, every item shaped like some reference item."""
    if isinstance(ref, dict):
        return isinstance(value, dict) and value.keys() == ref.keys()
    if not isinstance(value, list):
        return False
    allowed = {_shape(item) for item in ref}
    return not allowed or all(_shape(item) in allowed for item in value)


def _reference_values(refs: list[str]) -> list[dict | list]:
    values = [parse_json_output(r) for r in refs]
    bad = [Problem("invalid_reference", "the reference output is not a JSON object or array; fix the test data",
                   f"test example {i}") for i, value in enumerate(values) if value is None]
    if bad:
        raise TuneforgeError(bad)
    return values  # type: ignore[return-value]


def _matched(got: Counter, want: Counter) -> int:
    return sum((got & want).values())


@returns("json_valid_rate", "exact_match", "field_precision", "field_recall", "field_f1", "schema_compliance")
def extraction(preds: list[str | None], refs: list[str]) -> dict[str, float]:
    """JSON validity, exact match, field-level micro precision/recall/F1 and schema compliance.

    A reference is a JSON object or a JSON array (see `_pairs`); a prediction counts as valid
    JSON when it is either."""
    _same_length(preds, refs)
    gold = _reference_values(refs)
    parsed = [parse_json_output(p) for p in preds]
    tp = n_pred = n_ref = 0
    for value, ref in zip(parsed, gold):
        got, want = _pairs(value), _pairs(ref)
        tp, n_pred, n_ref = tp + _matched(got, want), n_pred + sum(got.values()), n_ref + sum(want.values())
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_ref)
    n = len(refs)
    return {
        "json_valid_rate": _ratio(sum(value is not None for value in parsed), n),
        # Compared as pairs, not with ==, so that true and 1 differ here as they do in the field scores.
        "exact_match": _ratio(sum(value is not None and type(value) is type(ref) and _pairs(value) == _pairs(ref)
                                  for value, ref in zip(parsed, gold)), n),
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": _f1(precision, recall),
        "schema_compliance": _ratio(sum(_complies(value, ref) for value, ref in zip(parsed, gold)), n),
    }


def field_f1(pred: str | None, ref: str) -> float:
    """Field F1 of one extraction; 1.0 exactly when the values match, so it refines exact match."""
    value, gold = parse_json_output(pred), _reference_values([ref])[0]
    got, want = _pairs(value), _pairs(gold)
    if not got and not want:
        return 1.0 if value is not None and type(value) is type(gold) else 0.0
    hit = _matched(got, want)
    return _f1(_ratio(hit, sum(got.values())), _ratio(hit, sum(want.values())))


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


@returns("rouge_l", "chrf", "exact_match")
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

def _score_change(scratch: Scratch, pred: str | None, ref: str, ref_tables: set, timeout_s: float) -> dict[str, Any]:
    """A change is right when it leaves every table either statement touched as the reference does."""
    try:
        pred_tables, got = scratch.effect(pred or "", ref_tables, timeout_s)
    except sqlite3.Error as err:
        return {"executed": False, "correct": False, "error": str(err)}
    want = scratch.effect(ref, pred_tables, timeout_s)[1]  # over the same tables as `got`
    return {"executed": True, "correct": sql_kind(pred) == "change" and got == want, "error": None}


@returns("exec_rate", "exec_accuracy")
def sql(preds: list[str | None], refs: list[str], db_path: str | Path, timeout_s: float = 5.0) -> dict[str, Any]:
    """Execution rate and execution accuracy against a SQLite database, plus `per_example`.

    A query's result compares as a multiset of rows (column order matters), in order only when the
    reference has ORDER BY; a change (INSERT/REPLACE/UPDATE/DELETE) compares by the tables it leaves,
    on a scratch copy (see sqlexec). The database itself is never changed. A reference that fails
    to run is an error in the test data, reported, not scored.
    per_example: [{"executed": bool, "correct": bool, "error": str | None}] in input order.
    """
    _same_length(preds, refs)
    conn = open_db(db_path)
    changes = [sql_kind(ref) == "change" for ref in refs]
    scratch = Scratch(conn) if any(changes) else None
    try:
        wanted, bad = [], []
        for i, (ref, change) in enumerate(zip(refs, changes)):
            try:
                # a change keeps the tables it writes; its state is taken again next to each prediction's
                wanted.append(scratch.effect(ref, timeout_s=timeout_s)[0] if change
                              else run_query(conn, ref, timeout_s))
            except sqlite3.Error as err:
                bad.append(Problem("sql_reference_error", f"the reference statement fails: {err}", f"test example {i}"))
        if bad:
            raise TuneforgeError(bad)
        per_example = []
        for pred, ref, change, want in zip(preds, refs, changes, wanted):
            if change:
                per_example.append(_score_change(scratch, pred, ref, want, timeout_s))
                continue
            try:
                got = run_query(conn, pred or "", timeout_s)
            except sqlite3.Error as err:
                per_example.append({"executed": False, "correct": False, "error": str(err)})
                continue
            per_example.append({"executed": True, "correct": same_rows(got, want, ordered(ref)), "error": None})
    finally:
        if scratch is not None:
            scratch.close()
        conn.close()
    n = len(refs)
    return {
        "exec_rate": _ratio(sum(e["executed"] for e in per_example), n),
        "exec_accuracy": _ratio(sum(e["correct"] for e in per_example), n),
        "per_example": per_example,
    }


TASK_METRICS = {"classification": classification.metric_names, "extraction": extraction.metric_names,
                "generation": generation.metric_names, "sql": sql.metric_names}


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
