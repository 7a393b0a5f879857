"""A small general-knowledge check, to see whether fine-tuning made the model forget basic things.

60 short questions written for tuneforge (capitals, arithmetic, science, units, everyday facts,
word tasks), each with the short answers we accept. A drop between the base model and a tuned
variant is a warning sign, not a benchmark score: the set is too small for fine distinctions.
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources


def load_general() -> list[dict]:
    """The questions, as [{"question": str, "answers": [str, ...]}], in file order."""
    text = resources.files("tuneforge.evaluate").joinpath("general.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _normalise(text: str) -> str:
    """Case-folded words with accents and punctuation removed: "Zürich!" -> "zurich"."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+|_", " ", text).split())


def score_general(pred: str | None, answers: list[str]) -> bool:
    """True when an accepted answer appears as a whole word or phrase in the prediction.

    Whole words so that "4" does not match "14"; punctuation is ignored on both sides, so
    "1,000" and "1 000" are the same and "0°C" contains "0".
    """
    said = f" {_normalise(pred or '')} "
    return any(form and f" {form} " in said for form in map(_normalise, answers))
