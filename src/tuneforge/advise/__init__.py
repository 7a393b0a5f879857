"""The advise stage: should you fine-tune, with which method on what hardware, at what cost.

    tuneforge advise decide --report runs/data/report.json --eval-report runs/eval/eval.json --target-accuracy 0.9
    tuneforge advise method --model smollm2-135m --device cpu
    tuneforge advise cost --requests-per-month 100000 --api-cost-per-request 0.05 \\
        --ft-cost-per-request 0.005 --upfront 22000

decide.py walks the guides' decision tree (prompting, RAG, few-shot, fine-tune) over the user's
numbers and the prepare and eval reports; method.py estimates training memory per method;
cost.py compares an API with a fine-tuned model month by month. Each answers with a dict (what
`--json` prints) and a `text()` for people. This module holds what they share: flag checking.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from tuneforge.config import problems_from_validation
from tuneforge.errors import Problem, TuneforgeError

C = TypeVar("C", bound=BaseModel)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def build(model: type[C], values: dict[str, Any], combination: Callable[[dict[str, Any]], list[Problem]]
          ) -> C:
    """Validate flag values into `model`; every bad flag is one problem named by its flag, and
    the checks across flags (`combination`, on the raw values) are reported in the same go."""
    given = {k: v for k, v in values.items() if v is not None}
    problems: list[Problem] = []
    built = None
    try:
        built = model.model_validate(given)
    except ValidationError as exc:
        for p in problems_from_validation(model, exc, ""):
            key, _, message = p.message.partition(": ")
            code = "missing_flag" if message == "required, but not given" else p.code
            problems.append(Problem(code, message, flag(key)))
    problems += combination(given)
    if problems or built is None:
        raise TuneforgeError(problems)
    return built
