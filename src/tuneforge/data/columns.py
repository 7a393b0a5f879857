"""Which columns of a tabular file (CSV, Parquet) hold the input and the output.

A table has one header, so it is checked once: a header that already names a known
format is read as such; common pairs (input/output, question/answer, prompt/response,
text/label, ...) are mapped to --input-col/--output-col; otherwise ONE problem shows the
header and the flags to pass, instead of a 'missing field' for every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.data.formats import LABEL_COLUMNS, Columns, detect
from tuneforge.errors import Problem

# first match wins, so the most specific names come first
INPUT_NAMES = ("input", "prompt", "question", "query", "instruction", "text", "sentence", "utterance", "source")
OUTPUT_NAMES = ("output", "completion", "response", "answer", "target", "label", "category", "intent", "class",
                "sql", "reply")


@dataclass
class Plan:
    columns: Columns
    mapped: dict[str, str] = field(default_factory=dict)  # {"input": name, "output": name} when inferred
    unused: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _complete(fmt: str, names: set[str]) -> bool:
    """Does a header that `detect` matched to `fmt` have every column that format needs?"""
    if fmt == "preference":
        return {"chosen", "rejected"} <= names and bool({"prompt", "messages"} & names)
    needs = {"openai": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "output"},
             "prompt_completion": {"prompt", "completion"}, "text": {"text"}, "columns": {"text"}}
    return needs.get(fmt, set()) <= names


def _missing(name: str, flag: str, names: list[str]) -> Problem:
    near = next((n for n in names if n.casefold() == name.casefold()), None)
    hint = f"; did you mean '{near}'?" if near else f"; pass {flag} with one of them"
    return Problem("missing_column", f"column '{name}' is not in the header [{', '.join(names)}]{hint}")


def plan_columns(header: tuple[str, ...] | list[str], fmt: str, columns: Columns) -> Plan:
    names = list(header)
    if columns.input_col:
        problems = [_missing(col, flag, names)
                    for flag, col in (("--input-col", columns.input_col), ("--output-col", columns.output_col))
                    if col and col not in names]
        if not columns.output_col and not any(c in names for c in LABEL_COLUMNS):
            problems.append(Problem(
                "missing_column", f"no output column: the header [{', '.join(names)}] has none of "
                f"{', '.join(LABEL_COLUMNS)}; pass --output-col with the column that holds the answers"))
        return Plan(columns, problems=problems)
    if fmt != "auto":
        return Plan(columns)
    known = detect(dict.fromkeys(names, ""), Columns())
    if known and _complete(known, set(names)):
        return Plan(columns)
    folded: dict[str, str] = {}
    for name in names:
        folded.setdefault(name.casefold(), name)
    source = next((folded[n] for n in INPUT_NAMES if n in folded), None)
    target = next((folded[n] for n in OUTPUT_NAMES if n in folded and folded[n] != source), None)
    if source and target:
        unused = [n for n in names if n and n not in (source, target)]
        return Plan(Columns(source, target, columns.system), {"input": source, "output": target}, unused)
    first, second = (names + ["COLUMN", "COLUMN"])[:2]
    return Plan(columns, problems=[Problem(
        "unknown_columns",
        f"the header [{', '.join(names)}] matches no known format; say which columns hold the input and the "
        f"output, e.g. --input-col {first} --output-col {second} (or name them input,output or text,label)")])
