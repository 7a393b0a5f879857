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


def splits(folder: Path, intents: int = 10, train_per: int = 50, val_per: int = 0, test_per: int = 20,
           seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test): train and val are disjoint queries from train.csv, test from test.csv.
    The train and test draws do not depend on val_per, so figures stay comparable."""
    names = json.loads((folder / "categories.json").read_text())[:intents]
    system = system_prompt(names)
    rng = random.Random(seed)

    def chat(text: str, name: str) -> dict:
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                             {"role": "assistant", "content": name}]}

    def rows(file: str, per: int, extra: int = 0) -> tuple[list[dict], list[dict]]:
        by_intent: dict[str, list[str]] = {n: [] for n in names}
        with open(folder / file, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["category"] in by_intent:
                    by_intent[row["category"]].append(row["text"].strip())
        out, rest = [], []
        for name in names:
            texts = sorted(set(by_intent[name]))
            rng.shuffle(texts)
            out += [chat(t, name) for t in texts[:per]]
            rest += [chat(t, name) for t in texts[per:per + extra]]
        rng.shuffle(out)
        random.Random(seed + 1).shuffle(rest)
        return out, rest

    train, val = rows("train.csv", train_per, val_per)
    return train, val, rows("test.csv", test_per)[0]


def subset(folder: Path, intents: int = 10, train_per: int = 50, test_per: int = 20,
           seed: int = 0) -> tuple[list[dict], list[dict]]:
    train, _, test = splits(folder, intents, train_per, 0, test_per, seed)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
