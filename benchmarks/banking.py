"""The Banking77 subset the train and quality benchmarks share: the first N intents of
categories.json, a fixed number of train and test queries per intent, as chat records
whose system prompt lists the intents (so the base model can be prompted zero-shot)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "banking77"


def system_prompt(intents: list[str]) -> str:
    return ("Classify the bank customer's message into exactly one of these intents: "
            + ", ".join(intents) + ". Answer with the intent name only.")


def subset(folder: Path, intents: int = 10, train_per: int = 50, test_per: int = 20,
           seed: int = 0) -> tuple[list[dict], list[dict]]:
    names = json.loads((folder / "categories.json").read_text())[:intents]
    system = system_prompt(names)
    rng = random.Random(seed)

    def rows(file: str, per: int) -> list[dict]:
        by_intent: dict[str, list[str]] = {n: [] for n in names}
        with open(folder / file, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["category"] in by_intent:
                    by_intent[row["category"]].append(row["text"].strip())
        out = []
        for name in names:
            texts = sorted(set(by_intent[name]))
            rng.shuffle(texts)
            out += [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": t},
                                  {"role": "assistant", "content": name}]} for t in texts[:per]]
        rng.shuffle(out)
        return out

    return rows("train.csv", train_per), rows("test.csv", test_per)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
