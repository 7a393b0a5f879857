"""Benchmark: `tuneforge prepare` on N generated chat records vs the script a user would write.

    python benchmarks/prepare_bench.py --records 1000000

Records are support-style messages drawn from a Zipf-distributed vocabulary of
several thousand real words (ranked by frequency in text installed with Python and
the venv: the language reference in `pydoc_data` and the packages' descriptions),
with 5% exact duplicates and 2% near duplicates (one word changed).

Runs the real CLI in a child process (memorisation check off) and measures wall
time and the child's peak RSS. The reference, in the same run and on a slice of
the same file, is what a user would write: parse every line, drop exact duplicates
with a dict, render the chat template and tokenize in batches of 1000, shuffle,
split 80/10/10 and write three JSONL files. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_isa  # noqa: E402

BATCH = 1000
VOCABULARY = 6000
_WORD = re.compile(r"\b[A-Za-z][a-z]{1,14}\b")
_URL = re.compile(r"\S*(https?://|www\.|\.com|\.org|\.io)\S*")


def vocabulary(size: int = VOCABULARY) -> list[str]:
    """Words ranked by frequency in prose installed locally (no network, no ../shared)."""
    from pydoc_data import topics

    texts = list(topics.topics.values())
    site = sysconfig.get_paths()["purelib"]
    for meta in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        with open(meta, encoding="utf-8", errors="ignore") as handle:
            texts.append(handle.read().split("\n\n", 1)[-1])  # the description, not the headers
    counts = Counter(w.lower() for text in texts for w in _WORD.findall(_URL.sub(" ", text)))
    return [w for w, _ in counts.most_common(size)]


def generate(path: Path, n: int, seed: int = 0) -> int:
    """Write n records; returns the vocabulary size used."""
    rng = random.Random(seed)
    words = vocabulary()
    # Zipf's law: the word of rank k is drawn with probability proportional to 1/k
    cum = list(itertools.accumulate(1.0 / k for k in range(1, len(words) + 1)))

    def text(k: int) -> str:
        picks = rng.choices(words, cum_weights=cum, k=k)
        return picks[0].capitalize() + " " + " ".join(picks[1:]) + "."

    written: list[dict] = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            roll = rng.random()
            if written and roll < 0.05:
                record = written[rng.randrange(len(written))]
            elif written and roll < 0.07:
                source = written[rng.randrange(len(written))]
                user = source["messages"][0]["content"].split(" ")
                user[rng.randrange(len(user))] = rng.choice(words)
                record = {"messages": [{"role": "user", "content": " ".join(user)}, source["messages"][1]]}
            else:
                record = {"messages": [{"role": "user", "content": text(rng.randint(12, 60)) + f" Ticket {i}."},
                                       {"role": "assistant", "content": text(rng.randint(2, 20))}]}
                if len(written) < 50_000:
                    written.append(record)
            handle.write(json.dumps(record) + "\n")
    return len(words)


def reference(path: Path, limit: int, model: str, out: Path) -> float:
    """Records/s of the script a user would write, on the first `limit` records."""
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    unique: dict[str, dict] = {}
    with open(path, encoding="utf-8") as handle:
        for line in itertools.islice(handle, limit):
            record = json.loads(line)
            unique.setdefault(json.dumps(record["messages"], sort_keys=True), record)
    records = list(unique.values())
    for begin in range(0, len(records), BATCH):
        chunk = records[begin:begin + BATCH]
        texts = tokenizer.apply_chat_template([r["messages"] for r in chunk], tokenize=False)
        for record, ids in zip(chunk, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            record["tokens"] = len(ids)
    random.Random(0).shuffle(records)
    n_held = len(records) // 10
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", records[:n_held]), ("val", records[n_held:2 * n_held]),
                       ("train", records[2 * n_held:])):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    return limit / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reference-records", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        t0 = time.perf_counter()
        vocab = generate(data, args.records)
        print(f"generated {args.records} records ({data.stat().st_size / 1e6:.0f} MB, {vocab} words) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        ref_records = min(args.reference_records, args.records)
        ref_rate = reference(data, ref_records, args.model, Path(tmp) / "reference")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", "prepare", str(data), "--out", str(Path(tmp) / "out"),
             "--model", args.model, "--no-memorisation-check", "--on-error", "drop"],
            capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(proc.returncode)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((Path(tmp) / "out" / "report.json").read_text())
    rate = args.records / seconds
    print(json.dumps({
        "records": args.records,
        "seconds": round(seconds, 1),
        "records_per_s": round(rate),
        "peak_rss_mb": round(peak_mb),
        "records_out": report["records_out"],
        "exact_duplicates": report["duplicates"]["exact"],
        "near_duplicates": report["duplicates"]["near"],
        "vocabulary": vocab,
        "reference": "dict dedup + batched template/tokenizer (1000) + split + write",
        "reference_records": ref_records,
        "reference_records_per_s": round(ref_rate),
        "speedup": round(rate / ref_rate, 2),
        "cpus": os.cpu_count(),
        "isa": cpu_isa(),
    }))


if __name__ == "__main__":
    main()
