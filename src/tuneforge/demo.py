"""`tuneforge demo`: the whole job on the built-in model, end to end, with visible progress.

prepare the example support tickets -> score the base model zero-shot and few-shot
-> fine-tune with LoRA -> score the fine-tune -> before/after table and report.html.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tuneforge.errors import Problem, TuneforgeError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_tickets.jsonl"


def demo(out: Path, data: Path | None = None, epochs: int = 2, console: Console | None = None,
         precision: str = "auto") -> dict[str, Any]:
    """precision: auto (as train: bf16 where the CPU has it, else int8_base where it
    resolves on), bf16, fp32, or int8 (training with int8_base); scoring is float32 unless bf16."""
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import Variant, assemble, load_examples, run_all, variants
    from tuneforge.models.tuned import load_tuned
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import bf16_supported, train

    console = console or Console(stderr=True)
    source = data or EXAMPLE
    if not source.exists():
        raise TuneforgeError(Problem("file_not_found", "the example tickets are missing; run "
                                     "`python examples/make_support_tickets.py` or pass --data FILE", str(source)))
    if precision not in ("auto", "bf16", "fp32", "int8"):
        raise TuneforgeError(Problem("invalid_value", f"must be auto, bf16, fp32 or int8, got {precision!r}",
                                     "--precision"))
    bf16 = bf16_supported("cpu") if precision == "auto" else precision == "bf16"
    int8 = "auto" if precision == "auto" else precision == "int8"
    started = time.perf_counter()
    console.rule("1/4 prepare the data")
    prepare(PrepareConfig(inputs=[source], out=out / "data"))
    console.print(f"prepared: {out / 'data' / 'report.md'}")

    cfg = EvalConfig(data=out / "data", out=out, adapters={"tuned": out / "run"}, bf16=bf16)
    examples = load_examples(cfg)
    console.rule(f"2/4 score the base model on {len(examples.references)} held-out tickets")
    base = run_all(cfg, examples, [v for v in variants(cfg) if v.name.startswith("base-")])

    console.rule("3/4 fine-tune with LoRA")
    run = out / "run"
    if (run / "checkpoints").exists() and not (run / "summary.json").exists():
        resume = True  # an interrupted demo picks up where it stopped
    else:
        resume = False
        if (run / "summary.json").exists():
            import shutil

            shutil.rmtree(run)
    summary = train(TrainConfig(data=out / "data", out=run, method="lora", epochs=epochs, resume=resume, bf16=bf16,
                                int8_base=int8))

    console.rule("4/4 score the fine-tune")
    tuned = run_all(cfg, examples, [Variant("tuned", lambda: load_tuned(run))])
    result = assemble(cfg, examples, {**base, **tuned})
    result["demo_seconds"] = round(time.perf_counter() - started, 1)
    trained_int8 = summary.get("settings", {}).get("int8_base")
    result["precision"] = "bf16" if bf16 else "int8 training, fp32 scoring" if trained_int8 else "fp32"
    return result
