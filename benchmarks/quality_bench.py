"""Benchmark: real task quality of tuneforge's defaults, base model vs fine-tune.

    python benchmarks/quality_bench.py --data ../shared/data/banking77
    python benchmarks/quality_bench.py --data ../shared/data/restaurant8k_extraction

banking77: 10 intents, 50 train and 20 test queries each (classification, accuracy).
restaurant8k_extraction: 500 train and 200 test messages to JSON slots (field F1).
Runs prepare -> train (lora, defaults) -> eval (base zero-shot, base few-shot, tuned)
with the real stages and prints every variant's main metric as one final JSON line.
The reference is the base model itself, prompted zero-shot and few-shot in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import banking  # noqa: E402
import restaurant  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=banking.DEFAULT)
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--epochs", default="auto")
    args = parser.parse_args()

    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import evaluate
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    extraction = "restaurant" in args.data.name
    train_rows, test_rows = (restaurant.subset(args.data) if extraction else banking.subset(args.data))
    work = args.out or Path(tempfile.mkdtemp(prefix="quality-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    started = time.perf_counter()
    prepare(PrepareConfig(inputs=[banking.write_jsonl(work / "train.jsonl", train_rows)],
                          test=[banking.write_jsonl(work / "test.jsonl", test_rows)], out=data,
                          split=(0.9, 0.1, 0.0), task="extraction" if extraction else "auto"))
    epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
    summary = train(TrainConfig(data=data, out=work / "run", epochs=epochs, tracking=["tensorboard"]))
    result = evaluate(EvalConfig(data=data, adapters={"tuned": work / "run"}, out=work / "eval"))
    metric = result["main_metric"]
    line = {"dataset": args.data.name, "task": result["task"], "metric": metric, "n": result["n"],
            "train_examples": summary["train_examples"], "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"],
            **{name: round(values[metric], 4) for name, values in result["variants"].items()},
            "total_seconds": round(time.perf_counter() - started, 1)}
    if result["task"] == "classification":
        line["tuned_accuracy_constrained"] = round(result["variants"]["tuned"]["accuracy_constrained"], 4)
    else:
        line["tuned_json_valid_rate"] = round(result["variants"]["tuned"]["json_valid_rate"], 4)
    print(f"report: {work / 'eval' / 'report.html'}", file=sys.stderr)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
