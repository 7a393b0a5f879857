"""Benchmark: `tuneforge prepare` on N generated records (~200 characters, 5% duplicates).

    python benchmarks/prepare_bench.py --records 1000000

Runs the real CLI in a child process (memorisation check off) and measures wall
time and the child's peak RSS. The reference, in the same run, is the naive
pipeline most scripts use: load every line, render the chat template per
record with Jinja, tokenize one record at a time, dedupe with a set; it is
timed on a slice and reported in records/s. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("account billing card charge refund invoice app crash login password reset update order delivery "
         "package late missing broken screen camera doorbell thermostat wifi router signal firmware plan "
         "subscription cancel upgrade downgrade price discount coupon email phone address receipt tax help "
         "please thanks urgent again still never always today yesterday week month year since after before").split()


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    written: list[str] = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            if written and rng.random() < 0.05:
                line = written[rng.randrange(len(written))]
            else:
                user = " ".join(rng.choices(WORDS, k=22)) + f" #{i}"
                answer = " ".join(rng.choices(WORDS, k=7))
                line = json.dumps({"messages": [{"role": "user", "content": user},
                                                {"role": "assistant", "content": answer}]})
                if len(written) < 50_000:
                    written.append(line)
            handle.write(line + "\n")


def reference(path: Path, limit: int, model: str) -> float:
    """Records/s of the naive pipeline on the first `limit` records."""
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    seen, rows = set(), []
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i >= limit:
                break
            rec = json.loads(line)
            key = json.dumps(rec, sort_keys=True).lower()
            if key in seen:
                continue
            seen.add(key)
            text = tokenizer.apply_chat_template(rec["messages"], tokenize=False)
            rows.append((rec, len(tokenizer(text, add_special_tokens=False)["input_ids"])))
    return limit / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reference-records", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        t0 = time.perf_counter()
        generate(data, args.records)
        print(f"generated {args.records} records ({data.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        ref_rate = reference(data, min(args.reference_records, args.records), args.model)
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
        "reference_records_per_s": round(ref_rate),
        "speedup": round(rate / ref_rate, 2),
    }))


if __name__ == "__main__":
    main()
