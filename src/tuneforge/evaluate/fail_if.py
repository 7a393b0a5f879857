"""--fail-if: a small comparison language over the evaluation metrics, for CI gates.

    tuneforge eval ... --fail-if "tuned.accuracy < base-few-shot.accuracy + 0.05"
    tuneforge eval ... --fail-if "tuned.macro_f1 < 0.8 or tuned.invalid_rate >= 0.1"

`VARIANT.METRIC` names a number; comparisons, and/or/not, + - * / and parentheses combine them.
The text is never given to eval(): references become placeholder names, Python's parser builds the
tree, and a walker that knows only the nodes below computes it.

`validate` runs before inference with metric names only: it walks the same tree without computing
(so `a / b` is not refused because b is not known yet) and refuses exactly what `check` would
refuse for any values, except a division by zero, which only the real values can show.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tuneforge.errors import Problem, TuneforgeError

# A variant name starts with a letter, digit or _ (so "a.x-b.y" reads as a minus) and has no dots;
# the lookbehind keeps the "8" of "0.8" from starting a name.
_REF = re.compile(r"(?<![\w.])([A-Za-z0-9_][A-Za-z0-9_-]*)\.([A-Za-z_]\w*)")
_PLACEHOLDER = "__tf_ref_{}__"

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
# Only for naming a refused operator in the error message.
_SYMBOL = {ast.Mod: "%", ast.Pow: "**", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
           ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.Invert: "~", ast.In: "in", ast.NotIn: "not in",
           ast.Is: "is", ast.IsNot: "is not"}


def _error(message: str) -> TuneforgeError:
    return TuneforgeError(Problem("invalid_fail_if", message, "--fail-if"))


def _listing(names) -> str:
    return ", ".join(sorted(names)) or "(none)"


@dataclass
class _Expression:
    """The condition with references swapped for placeholders, and what each placeholder stands for."""

    source: str
    values: dict[str, float] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    static: bool = False  # names only: check the shape of the condition, compute nothing

    def show(self, node: ast.AST) -> str:
        """The user's own text for a node, for error messages."""
        text = ast.get_source_segment(self.source, node) or type(node).__name__
        for name, ref in self.refs.items():
            text = text.replace(name, ref)
        return text

    def number(self, node: ast.AST) -> float:
        value = self.walk(node)
        if isinstance(value, bool):
            raise _error(f"{self.show(node)!r} is true/false where a number is needed")
        return value

    def truth(self, node: ast.AST) -> bool:
        value = self.walk(node)
        if not isinstance(value, bool):
            raise _error(f"{self.show(node)!r} is a number where a comparison is needed, e.g. 'tuned.accuracy < 0.8'")
        return value

    def walk(self, node: ast.AST) -> float | bool:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in self.values:
            return self.values[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.number(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self.truth(node.operand)
        if isinstance(node, ast.BoolOp):
            results = [self.truth(v) for v in node.values]  # all checked, so a bad part is never skipped
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right = self.number(node.left), self.number(node.right)
            if self.static:
                return 0.0
            if isinstance(node.op, ast.Div) and right == 0:
                raise _error(f"division by zero in {self.show(node)!r}: {self.show(node.right)!r} is 0 in this "
                             "evaluation, so the condition has no value; guard it, e.g. 'b.x > 0 and a.x / b.x < 1.1'")
            return _ARITH[type(node.op)](left, right)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            # a < b < c means a < b and b < c, as in Python
            terms = [self.number(node.left)] + [self.number(c) for c in node.comparators]
            if self.static:
                return True
            return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, terms, terms[1:]))
        raise _error(f"{self.describe(node)} is not allowed; use VARIANT.METRIC, numbers, "
                     "< <= > >= == !=, and/or/not, + - * / and parentheses")

    def describe(self, node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return f"the bare name {node.id!r} (write VARIANT.METRIC)"
        ops = node.ops if isinstance(node, ast.Compare) else [getattr(node, "op", None)]
        op = next((op for op in ops if type(op) in _SYMBOL), None)
        if op is not None:
            return f"the operator {_SYMBOL[type(op)]!r} in {self.show(node)!r}"
        return repr(self.show(node))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve(expr: str, names: dict[str, Iterable[str]], value_of: Callable[[str, str], float],
             static: bool = False) -> _Expression:
    """Replace each VARIANT.METRIC by a placeholder name; check that the name exists, then take its value."""
    values: dict[str, float] = {}
    refs: dict[str, str] = {}

    def swap(match: re.Match) -> str:
        variant, metric = match.groups()
        if variant not in names:
            raise _error(f"unknown variant {variant!r} in {match.group(0)!r}; variants: {_listing(names)}")
        if metric not in names[variant]:
            raise _error(f"unknown metric {metric!r} in {match.group(0)!r}; metrics of {variant}: "
                         f"{_listing(names[variant])}")
        name = _PLACEHOLDER.format(len(values))
        values[name], refs[name] = value_of(variant, metric), match.group(0)
        return name

    return _Expression(_REF.sub(swap, expr).strip(), values, refs, static)


def _truth(expr: str, parsed: _Expression) -> bool:
    try:
        tree = ast.parse(parsed.source, mode="eval")
    except SyntaxError as err:
        raise _error(f"cannot parse {expr.strip()!r} ({err.msg}); "
                     "e.g. 'tuned.accuracy < base.accuracy + 0.05'") from None
    return parsed.truth(tree.body)


def _not_empty(expr: str) -> None:
    if not expr.strip():
        raise _error("the condition is empty; e.g. 'tuned.accuracy < 0.8'")


def references(expr: str) -> list[tuple[str, str]]:
    """The (variant, metric) pairs the condition names, in order."""
    return [match.groups() for match in _REF.finditer(expr)]


def validate(expr: str, metric_names: dict[str, Iterable[str]]) -> None:
    """TuneforgeError when the condition could never be computed: bad syntax, an operator that is
    not allowed, an unknown variant or metric, a number where a comparison belongs (or the reverse).

    `metric_names` maps variant name -> the metrics it will have, e.g. {"tuned": ["accuracy", ...]}.
    """
    _not_empty(expr)
    known = {variant: set(found) for variant, found in metric_names.items()}
    _truth(expr, _resolve(expr, known, lambda variant, metric: 1.0, static=True))


def check(expr: str, variants: dict[str, dict[str, float]]) -> bool:
    """True when the condition holds (the run should then fail); TuneforgeError when it is not valid.

    `variants` maps variant name -> metric name -> value, e.g. {"tuned": {"accuracy": 0.91}}.
    """
    _not_empty(expr)
    numeric = {variant: {k for k, v in found.items() if _is_number(v)} for variant, found in variants.items()}

    def value_of(variant: str, metric: str) -> float:
        value = float(variants[variant][metric])
        if not math.isfinite(value):  # NaN compares false with everything: the gate would never fire
            raise _error(f"{variant}.{metric} is {value}, not a finite number; it cannot be compared")
        return value

    return _truth(expr, _resolve(expr, numeric, value_of))
