"""Benchmark: the whole prepare -> train -> eval path, this tree against an earlier commit.

    python benchmarks/pipeline_bench.py --task demo --before bfc2738 --precision fp32
    python benchmarks/pipeline_bench.py --task intents --before bfc2738 --precision fp32
    python benchmarks/pipeline_bench.py --task demo --before bfc2738 --precision int8 --compare-fp32 --isa avx2

Tasks:
- `demo`: what `make demo` runs, as CLI stages: prepare the example support tickets,
  LoRA for 2 epochs, eval of base zero-shot, base few-shot and the tuned model on the
  held-out tickets.
- `intents`: short examples, the most common classification data: 15 Banking77 intents,
  36 train queries each (540), 4 more each for validation, 10 test queries each from
  test.csv; a user turn of ~10-20 words and the intent as the answer, no system prompt
  of our own (the model's template adds its default). LoRA with `epochs: auto`.

Both sides run the same CLI commands (`python -m tuneforge.cli`, same interpreter and
packages, same data and settings) one after the other; the `before` side imports
tuneforge from a checkout of `--before` (a git worktree made for the run). Stage wall
times include loading the model and writing artifacts. `--precision fp32` turns bf16
off in train and eval on both sides (a stand-in for an AVX2-only CPU). `--precision int8`
trains this tree with `int8_base` (the frozen base's products in int8; eval stays float32)
and the `before` side in fp32; `--compare-fp32` adds a side `after_fp32`, this tree in
fp32, so int8's speed and accuracy are seen against float32 in the same run. `--isa avx2`
makes every stage's kernels take their AVX2 code paths (machine.AVX2_KERNELS), the
nearest an AVX512 CPU comes to an AVX2-only one (it leaves VNNI to `torch._int_mm`, so
int8 figures measured so hold for CPUs with VNNI only). Prints one final JSON line; `isa` names the
CPU's vector extensions (or the forced AVX2). `--only-before` runs the `before` side alone,
for a run of this tree measured separately on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banking import DEFAULT, write_jsonl  # noqa: E402
from machine import AVX2_KERNELS, isa_label  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICKETS = ROOT / "examples" / "support_tickets.jsonl"


def intent_rows(folder: Path, intents: int = 15, train_per: int = 36, val_per: int = 4, test_per: int = 10):
    import csv
    import random

    names = json.loads((folder / "categories.json").read_text())[:intents]
    rng = random.Random(0)

    def chat(text: str, name: str) -> dict:
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": name}]}

    def queries(file: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {n: [] for n in names}
        with open(folder / file, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["category"] in found:
                    found[row["category"]].append(row["text"].strip())
        for texts in found.values():
            texts[:] = sorted(set(texts))
            rng.shuffle(texts)
        return found

    train_q, test_q = queries("train.csv"), queries("test.csv")
    train = [chat(t, n) for n in names for t in train_q[n][:train_per]]
    val = [chat(t, n) for n in names for t in train_q[n][train_per:train_per + val_per]]
    test = [chat(t, n) for n in names for t in test_q[n][:test_per]]
    rng.shuffle(train)
    return train, val, test


def stages(task: str, work: Path, data_dir: Path, precision: str, knows_int8: bool) -> list[tuple[str, list[str]]]:
    prec = ["--set", "bf16=false"] if precision != "bf16" else []
    # this tree's sides say int8_base either way, so a side's precision never rests on a default
    int8 = ["--set", f"int8_base={str(precision == 'int8').lower()}"] if knows_int8 else []
    data, run, report = work / "data", work / "run", work / "eval"
    if task == "demo":
        prepare = ["prepare", str(TICKETS), "--out", str(data)]
        train = ["train", "--data", str(data), "--out", str(run), "--method", "lora", "--set", "epochs=2"]
    else:
        prepare = ["prepare", str(data_dir / "train.jsonl"), "--val", str(data_dir / "val.jsonl"),
                   "--test", str(data_dir / "test.jsonl"), "--split", "1,0,0", "--out", str(data)]
        train = ["train", "--data", str(data), "--out", str(run), "--method", "lora", "--set", "epochs=auto"]
    evaluate = ["eval", "--data", str(data), "--adapter", f"tuned={run}", "--out", str(report)]
    return [("prepare", prepare), ("train", train + prec + int8), ("eval", evaluate + prec)]


def run_side(src: Path, task: str, work: Path, data_dir: Path, precision: str, avx2: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false", **(AVX2_KERNELS if avx2 else {})}
    seconds = {}
    for name, args in stages(task, work, data_dir, precision, knows_int8=src == ROOT / "src"):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], env=env, capture_output=True, text=True)
        seconds[name] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            raise SystemExit(f"{src}: {name} failed: {done.stderr.strip()[-2000:]}")
    summary = json.loads((work / "run" / "summary.json").read_text())
    report = json.loads((work / "eval" / "eval.json").read_text())
    metric = report["main_metric"]
    variants = report["variants"]

    def score(v: dict) -> float:
        return max(v.get(metric, 0.0), v.get(f"{metric}_constrained", 0.0))

    base = max(score(v) for n, v in variants.items() if n.startswith("base-"))
    return {
        "seconds": seconds, "total_s": round(sum(seconds.values()), 1),
        "train_tokens_per_s": summary["tokens_per_second"], "train_steps": summary["steps"],
        "epochs": summary["epochs"], "stopped_early": summary.get("stopped_early"),
        "best_eval_loss": summary["best_eval_loss"],
        "eval_examples_per_s": {n: v.get("examples_per_s") for n, v in variants.items()},
        metric: {n: round(v.get(metric, 0.0), 4) for n, v in variants.items()},
        "best_baseline": round(base, 4), "tuned_minus_best_baseline": round(score(variants["tuned"]) - base, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("demo", "intents"), default="demo")
    parser.add_argument("--before", help="git commit to compare with (left out: this tree only)")
    parser.add_argument("--data", type=Path, default=DEFAULT, help="the banking77 folder (task intents)")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="auto: this tree's defaults on this CPU; fp32: bf16 off everywhere; int8: this tree "
                             "trains with int8_base, before in fp32")
    parser.add_argument("--compare-fp32", action="store_true", help="with int8: also run this tree in fp32")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: force AVX2 kernels in every stage")
    parser.add_argument("--only-before", action="store_true",
                        help="run the --before side alone (the old code on short examples takes over half an hour)")
    args = parser.parse_args()
    if args.only_before and not args.before:
        parser.error("--only-before needs --before")
    avx2 = args.isa == "avx2"
    if args.precision == "auto":
        sys.path.insert(0, str(ROOT / "src"))
        from tuneforge.train.run import bf16_supported, int8_gemm_preferred

        # this tree's defaults (int8_gemm_preferred measures the CPU it runs on, not a forced ISA)
        precision = ("bf16" if bf16_supported("cpu") and not avx2
                     else "int8" if int8_gemm_preferred("cpu") and not avx2 else "fp32")
    else:
        precision = args.precision
    base_precision = "fp32" if precision == "int8" else precision  # `before` has no int8

    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    data_dir = work / "source"
    data_dir.mkdir()
    if args.task == "intents":
        for name, rows in zip(("train", "val", "test"), intent_rows(args.data)):
            write_jsonl(data_dir / f"{name}.jsonl", rows)
    plan = []  # (side, source tree, precision)
    if args.before:
        checkout = work / "before-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(checkout), args.before],
                       check=True)
        plan.append(("before", checkout / "src", base_precision))
    if precision == "int8" and args.compare_fp32 and not args.only_before:
        plan.append(("after_fp32", ROOT / "src", "fp32"))
    if not args.only_before:
        plan.append(("after", ROOT / "src", precision))
    sides = {}
    try:
        for name, tree, side_precision in plan:
            print(f"{name}: {args.task}, {side_precision}, isa {isa_label(avx2)}", file=sys.stderr)
            sides[name] = run_side(tree, args.task, work / name, data_dir, side_precision, avx2)
            print(f"{name}: {json.dumps(sides[name])}", file=sys.stderr)
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "before-tree")])
    result = {"isa": isa_label(avx2), "precision": precision, "task": args.task, "before": args.before,
              "sides": sides}
    if "before" in sides and "after" in sides:
        before, after = sides["before"], sides["after"]
        result["speedup"] = {
            "total": round(before["total_s"] / after["total_s"], 2),
            "train_tokens_per_s": round(after["train_tokens_per_s"] / before["train_tokens_per_s"], 2),
            "eval": round(before["seconds"]["eval"] / after["seconds"]["eval"], 2),
        }
    if "after_fp32" in sides:
        result["int8_vs_fp32_train_tokens_per_s"] = round(
            sides["after"]["train_tokens_per_s"] / sides["after_fp32"]["train_tokens_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
