"""The Restaurant-8k slot-extraction subset used by the quality benchmark: each message to
a JSON object of the slots it mentions (date, first_name, last_name, people, time)."""

from __future__ import annotations

import json
import random
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "restaurant8k_extraction"
SYSTEM = ("Extract the booking details from the customer's message as a JSON object with only the keys that "
          "are mentioned, chosen from: date, first_name, last_name, people, time. Copy the words as written. "
          "Answer {} when nothing is mentioned.")


def subset(folder: Path, train_n: int = 500, test_n: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)

    def rows(file: str, n: int) -> list[dict]:
        records = [json.loads(line) for line in (folder / file).read_text(encoding="utf-8").splitlines() if line]
        rng.shuffle(records)
        return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["text"]},
                              {"role": "assistant", "content": json.dumps(r["target"], sort_keys=True)}]}
                for r in records[:n]]

    return rows("train.jsonl", train_n), rows("test.jsonl", test_n)
