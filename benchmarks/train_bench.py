"""Benchmark: tuneforge `lora` (its defaults) against the seeds' recipe, in one run.

    python benchmarks/train_bench.py [--data ../shared/data/banking77] [--epochs 2]

Same data (10 Banking77 intents, 50 train queries each; eval on 20 test queries
each), same model (the built-in SmolLM2-135M), same LoRA rank and targets, same
number of epochs and batch size.
- reference: Hugging Face `Trainer` + PEFT LoRA in float32 with the standard
  collator (each batch padded to its longest example), no packing, no length grouping;
- tuneforge: `tuneforge train` defaults (packing with per-example attention,
  bf16 where the CPU has it, logits only where there is a loss).
Both are scored by the same evaluator here (float32, mean loss per answer token).
Speed is real (non-padding) tokens per second of training. `mfu` divides the model
FLOPs per second of the tuneforge run by this machine's bf16 matmul peak, measured
in this run. Then a few steps of `lora`, `qlora` and `full` in fresh processes give
their peak RSS. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banking import DEFAULT, subset, write_jsonl  # noqa: E402

LORA = dict(r=16, alpha=32, dropout=0.05)
BATCH = 8


def matmul_peak_flops(size: int = 2048, repeats: int = 20) -> float:
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 * repeats / best


def examples(model_path: str, rows: list[dict]):
    from transformers import AutoTokenizer

    from tuneforge.train.collate import Encoder

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoder = Encoder(tokenizer, 2048)
    return tokenizer, [e for e in (encoder.chat(r["messages"]) for r in rows) if e is not None]


@torch.no_grad()
def eval_loss(model, val, pad_id: int) -> float:
    """Mean cross-entropy per answer token, float32, padded batches: the same judge for both."""
    from tuneforge.train.collate import IGNORE, padded_batch

    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(val), 16):
        batch = padded_batch(val[start:start + 16], pad_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        keep = batch.targets != IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[keep], batch.targets[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


def run_reference(model_path: str, train, val, pad_id: int, epochs: int, out: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                                             lora_dropout=LORA["dropout"], target_modules="all-linear"))
    data = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)} for e in train]

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=epochs,
                             learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
                             logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[],
                             use_cpu=True, bf16=False, fp16=False, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "right"
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    tokens = sum(len(e) for e in train) * epochs
    seconds = result.metrics["train_runtime"]
    return {"tokens": tokens, "seconds": seconds, "wall": wall, "tokens_per_s": tokens / seconds,
            "eval_loss": eval_loss(model, val, pad_id)}


def run_tuneforge(data_dir: Path, epochs: int, out: Path, model_path: str, val, pad_id: int) -> dict:
    from tuneforge.models.tuned import load_tuned
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    cfg = TrainConfig(data=data_dir, out=out, method="lora", epochs=epochs, batch_size=BATCH,
                      lora={"r": LORA["r"], "alpha": LORA["alpha"]}, tracking=[])
    start = time.perf_counter()
    summary = train(cfg, progress=False)
    wall = time.perf_counter() - start
    model, _ = load_tuned(out)
    return {"tokens": summary["train_tokens"], "target_tokens": summary["trained_target_tokens"],
            "seconds": summary["train_seconds"], "wall": wall, "tokens_per_s": summary["tokens_per_second"],
            "eval_loss": eval_loss(model, val, pad_id), "summary": summary}


def model_flops(model_path: str, tokens: int, target_tokens: int, trainable: int, mean_len: float) -> float:
    """FLOPs the LoRA step needs: forward and input-gradient passes through the frozen linear
    layers (4 per weight per token), the adapters' own training (6 per weight per token),
    causal attention on each example, and the LM head only where there is a loss."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    head = c.hidden_size * c.vocab_size
    per_layer = (c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
                 if hasattr(c, "head_dim") else 3 * c.hidden_size ** 2)
    per_layer += c.num_attention_heads * (c.hidden_size // c.num_attention_heads) * c.hidden_size
    per_layer += 3 * c.hidden_size * c.intermediate_size
    linear = per_layer * c.num_hidden_layers
    attention = 2 * 2 * c.num_hidden_layers * c.hidden_size * (mean_len / 2)  # QK^T and AV, causal half
    return tokens * (4 * linear + 6 * trainable + 2 * attention) + target_tokens * 4 * head


def peak_rss(data_dir: Path, work: Path, method: str, steps: int = 4) -> int | None:
    out = work / f"rss-{method}"
    done = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", "--data", str(data_dir), "--out", str(out),
                           "--method", method, "--max-steps", str(steps), "--set", "tracking=[]",
                           "--set", f"batch_size={BATCH}", "--set", "eval_limit=16"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{method}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads((out / "summary.json").read_text())["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT, help="the banking77 folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--intents", type=int, default=10)
    parser.add_argument("--per-intent", type=int, default=50)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()

    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.models import resolve_model

    model_path = str(resolve_model("smollm2-135m"))
    train_rows, test_rows = subset(args.data, args.intents, args.per_intent, 20)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    data_dir = work / "data"
    prepare(PrepareConfig(inputs=[write_jsonl(work / "train.jsonl", train_rows)],
                          val=[write_jsonl(work / "val.jsonl", test_rows)], out=data_dir, split=(1.0, 0.0, 0.0),
                          memorisation_check=False))
    prepared = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    tokenizer, train = examples(model_path, prepared)
    _, val = examples(model_path, test_rows)
    pad = tokenizer.pad_token_id
    print(f"{len(train)} train / {len(val)} eval examples, {args.epochs} epochs", file=sys.stderr)

    peak = matmul_peak_flops()
    ours = run_tuneforge(data_dir, args.epochs, work / "tuneforge", model_path, val, pad)
    print(f"tuneforge: {ours['tokens_per_s']:.0f} tok/s, eval loss {ours['eval_loss']:.4f}", file=sys.stderr)
    ref = run_reference(model_path, train, val, pad, args.epochs, work / "reference")
    print(f"reference: {ref['tokens_per_s']:.0f} tok/s, eval loss {ref['eval_loss']:.4f}", file=sys.stderr)
    mean_len = sum(len(e) for e in train) / len(train)
    flops = model_flops(model_path, ours["tokens"], ours["target_tokens"], ours["summary"]["trainable_params"],
                        mean_len)
    result = {
        "examples": len(train), "epochs": args.epochs,
        "reference_tokens_per_s": round(ref["tokens_per_s"], 1),
        "tuneforge_tokens_per_s": round(ours["tokens_per_s"], 1),
        "speedup": round(ours["tokens_per_s"] / ref["tokens_per_s"], 2),
        "reference_wall_s": round(ref["wall"], 1), "tuneforge_wall_s": round(ours["wall"], 1),
        "reference_eval_loss": round(ref["eval_loss"], 4), "tuneforge_eval_loss": round(ours["eval_loss"], 4),
        "bf16_peak_tflops": round(peak / 1e12, 3),
        "mfu": round(flops / ours["seconds"] / peak, 3),
    }
    if not args.skip_rss:
        result["peak_rss_mb"] = {m: peak_rss(data_dir, work, m) for m in ("lora", "qlora", "full")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
