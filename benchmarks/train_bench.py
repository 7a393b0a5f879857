"""Benchmark: tuneforge LoRA training against Hugging Face Trainer + PEFT, like for like.

    python benchmarks/train_bench.py [--data ../shared/data/banking77] [--epochs 2]

Data: 10 Banking77 intents, 50 train queries each, 5 more each from train.csv as the
validation split (checkpoint selection), 20 test queries each from test.csv (the judge).
Every side gets the same examples and token ids, the same LoRA (r=16, alpha=32,
dropout 0, all linear layers), batch size 8, learning rate 2e-4 with cosine decay
and 5% warm-up, the same epochs, an eval on the validation split every `eval_steps`
with a checkpoint, and keeps the checkpoint with the lowest validation loss.

Sides:
- `tuneforge`: `tuneforge train` (packing with per-example attention, the system prompt
  the step's examples share computed once, frozen base in bf16 where the CPU has
  AVX512-BF16/AMX, fused LoRA).
- `tuneforge_unshared`: the same with `shared_prefix: false` (every example computed
  whole), so the gain of that one change is measured in the same run.
- `hf_seeds`: the recipe this benchmark used first: Trainer in float32, each batch
  padded to its longest example, no length grouping.
- `hf_flatten`: Trainer's best standard recipe for this: base weights and autocast in
  bf16 where the CPU has it, padding-free `DataCollatorWithFlattening` (transformers
  builds a per-example attention mask from the restarting position ids).
- `hf_group`: the other standard recipe: bf16 as above, padded batches with
  `group_by_length`.

Time is the wall time of the whole training call on every side: loading the model,
tokenizing, training, the validation evals and checkpoints, saving the adapter.
Speed is real (non-padding) tokens of training per second of that wall time.
`best_reference` is the faster of hf_flatten and hf_group. Every side is then scored
by the same judge here: its saved best adapter on the same float32 base model, mean
cross-entropy per answer token on the test split.
`--precision fp32` turns bf16 off on every side (a stand-in for an AVX2-only CPU).
`--precision int8` trains the tuneforge sides with `int8_base` (the frozen base's
products as int8 GEMMs) and adds `tuneforge_fp32`, the same run in float32; the
references run in float32, their best option without bf16. `--seeds N` trains each tuneforge
side N times (seeds 0..N-1: adapter initialisation and example order) and reports the means,
with each seed's test loss, since one run's loss moves by several percent with the seed;
the HF references run once. `--isa avx2` restarts the
benchmark with every kernel forced onto its AVX2 code path (machine.AVX2_KERNELS).
Prints one final JSON line; `isa` names the CPU's vector extensions (or the forced AVX2).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banking import DEFAULT, splits, write_jsonl  # noqa: E402
from machine import isa_label, restart_with_avx2_kernels  # noqa: E402

LORA = dict(r=16, alpha=32, dropout=0.0)
BATCH = 8
LR, WARMUP = 2e-4, 0.05
SIDES = ("hf_seeds", "hf_flatten", "hf_group")


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 20) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 * repeats / best


def encode(tokenizer, rows: list[dict]):
    from tuneforge.train.collate import Encoder

    encoder = Encoder(tokenizer, 2048)
    return [e for e in (encoder.chat(r["messages"]) for r in rows) if e is not None]


@torch.no_grad()
def judge_loss(model, examples, pad_id: int) -> float:
    """Mean cross-entropy per answer token, float32, padded batches: the same judge for all."""
    from tuneforge.train.collate import IGNORE, padded_batch

    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), 16):
        batch = padded_batch(examples[start:start + 16], pad_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        keep = batch.targets != IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[keep], batch.targets[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


def run_hf(side: str, model_path: str, train_rows, val_rows, epochs: int, eval_steps: int, bf16: bool,
           out: Path) -> dict:
    """One Trainer run, timed from loading the model to the saved adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainingArguments)

    use_bf16 = bf16 and side != "hf_seeds"
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, val = encode(tokenizer, train_rows), encode(tokenizer, val_rows)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                                             lora_dropout=LORA["dropout"], target_modules="all-linear"))

    def rows(examples):
        return [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)} for e in examples]

    if side == "hf_flatten":
        collator = DataCollatorWithFlattening()
    else:
        tokenizer.padding_side = "right"
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, per_device_eval_batch_size=16,
        num_train_epochs=epochs, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,
        train_sampling_strategy="group_by_length" if side == "hf_group" else "random",
        eval_strategy="steps", eval_steps=eval_steps,
        save_strategy="steps", save_steps=eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=False, logging_steps=10, report_to=[],
        use_cpu=not torch.cuda.is_available(), bf16=use_bf16, seed=0, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows(train), eval_dataset=rows(val),
                      data_collator=collator)
    result = trainer.train()
    trainer.save_model(str(out / "adapter"))
    wall = time.perf_counter() - start
    return {"adapter": out / "adapter", "wall_s": wall, "loop_s": result.metrics["train_runtime"],
            "bf16": use_bf16}


def run_tuneforge(data_dir: Path, epochs: int, eval_steps: int, bf16: bool, out: Path, shared_prefix: bool,
                  int8: bool = False, seed: int = 0) -> dict:
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    cfg = TrainConfig(data=data_dir, out=out, method="lora", epochs=epochs, batch_size=BATCH, learning_rate=LR,
                      warmup=WARMUP, lr_scheduler="cosine", eval_steps=eval_steps, save_steps=eval_steps, bf16=bf16,
                      shared_prefix=shared_prefix, int8_base=int8, tracking=[], seed=seed,
                      lora={"r": LORA["r"], "alpha": LORA["alpha"], "dropout": LORA["dropout"]})
    start = time.perf_counter()
    summary = train(cfg, progress=False)
    wall = time.perf_counter() - start
    return {"adapter": out / "adapter", "wall_s": wall, "loop_s": summary["train_seconds"],
            "bf16": summary["settings"]["bf16"], "summary": summary}


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
    parser.add_argument("--references", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32", "int8"), default="auto",
                        help="auto: bf16 where the CPU has AVX512-BF16/AMX; fp32 stands in for an AVX2-only CPU; "
                        "int8: tuneforge with int8_base")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: force every kernel onto its AVX2 code path")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-unshared", action="store_true", help="leave out the tuneforge_unshared side")
    parser.add_argument("--seeds", type=int, default=1, help="train the tuneforge sides with seeds 0..N-1 (the "
                        "figures are means; test_loss_seeds lists each)")
    args = parser.parse_args()
    avx2 = args.isa == "avx2"
    if avx2:
        restart_with_avx2_kernels()
    references = [r for r in args.references.split(",") if r]
    unknown = set(references) - set(SIDES)
    if unknown:
        parser.error(f"unknown reference {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}")

    from peft import PeftModel
    from transformers import AutoTokenizer

    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.models import load_model, resolve_model
    from tuneforge.train.run import bf16_supported

    model_path = str(resolve_model("smollm2-135m"))
    train_rows, val_rows, test_rows = splits(args.data, args.intents, args.per_intent, 5, 20)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    data_dir = work / "data"
    prepare(PrepareConfig(inputs=[write_jsonl(work / "train.jsonl", train_rows)],
                          val=[write_jsonl(work / "val.jsonl", val_rows)],
                          test=[write_jsonl(work / "test.jsonl", test_rows)], out=data_dir, split=(1.0, 0.0, 0.0),
                          memorisation_check=False))

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (data_dir / name).read_text().splitlines()]

    train_prepared, val_prepared, test_prepared = read("train.jsonl"), read("val.jsonl"), read("test.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    test = encode(tokenizer, test_prepared)
    train_examples = encode(tokenizer, train_prepared)
    tokens = sum(len(e) for e in train_examples) * args.epochs  # the same real tokens on every side
    steps = math.ceil(len(train_prepared) / BATCH) * args.epochs
    eval_steps = max(1, steps // 10)
    bf16 = bf16_supported("cpu") and not avx2 if args.precision == "auto" else args.precision == "bf16"
    int8 = args.precision == "int8"
    precision = "int8" if int8 else "bf16" if bf16 else "fp32"
    print(f"{len(train_prepared)} train / {len(val_prepared)} val / {len(test)} test, {args.epochs} epochs, "
          f"eval every {eval_steps} of {steps} steps, isa {isa_label(avx2)}, {precision}", file=sys.stderr)
    load_model(model_path)  # warm the page cache so no side pays for the first read from disk

    seeds = range(args.seeds)
    sides: dict[str, list[dict]] = {}  # every run of a side: one per seed for tuneforge's, one for HF's
    sides["tuneforge"] = [run_tuneforge(data_dir, args.epochs, eval_steps, bf16, work / f"tuneforge-{s}",
                                        shared_prefix=True, int8=int8, seed=s) for s in seeds]
    if int8:
        sides["tuneforge_fp32"] = [run_tuneforge(data_dir, args.epochs, eval_steps, False, work / f"fp32-{s}",
                                                 shared_prefix=True, seed=s) for s in seeds]
    if not args.skip_unshared:
        sides["tuneforge_unshared"] = [run_tuneforge(data_dir, args.epochs, eval_steps, bf16, work / f"unshared-{s}",
                                                     shared_prefix=False, int8=int8, seed=s) for s in seeds]
    for side in references:
        sides[side] = [run_hf(side, model_path, train_prepared, val_prepared, args.epochs, eval_steps, bf16,
                              work / side)]
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    figures, wall = {}, {}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    for name, runs in sides.items():
        # every side's saved (best) adapter on the same float32 base, so precision cannot tilt the judge
        losses = [judge_loss(PeftModel.from_pretrained(load_model(model_path), str(r["adapter"])), test, pad)
                  for r in runs]
        wall[name] = mean([r["wall_s"] for r in runs])
        figures[name] = {"tokens_per_s": round(tokens / wall[name], 1), "wall_s": round(wall[name], 1),
                         "train_loop_s": round(mean([r["loop_s"] for r in runs]), 1), "bf16": runs[0]["bf16"],
                         "test_loss": round(mean(losses), 4)}
        if len(runs) > 1:
            figures[name]["test_loss_seeds"] = [round(x, 4) for x in losses]
        print(f"{name}: {figures[name]}", file=sys.stderr)
    ours = sides["tuneforge"][0]

    best = min((r for r in references if r != "hf_seeds"), key=lambda r: wall[r], default=None)
    mean_len = sum(len(e) for e in train_examples) / len(train_examples)
    summary = ours["summary"]
    flops = model_flops(model_path, tokens, summary["trained_target_tokens"], summary["trainable_params"],
                        mean_len)
    peak = matmul_peak_flops(torch.bfloat16 if bf16 else torch.float32)
    result = {
        "isa": isa_label(avx2), "precision": precision, "examples": len(train_prepared),
        "val_examples": len(val_prepared), "test_examples": len(test), "epochs": args.epochs, "lora": LORA,
        "batch_size": BATCH,
        "sides": figures, "best_reference": best,
        "seeds": args.seeds,
        "speedup_vs_best": round(wall[best] / wall["tuneforge"], 2) if best else None,
        "speedup_vs_seeds": round(wall["hf_seeds"] / wall["tuneforge"], 2) if "hf_seeds" in wall else None,
        "speedup_vs_unshared": (round(wall["tuneforge_unshared"] / wall["tuneforge"], 2)
                                if "tuneforge_unshared" in wall else None),
        "speedup_vs_fp32": round(wall["tuneforge_fp32"] / wall["tuneforge"], 2) if "tuneforge_fp32" in wall else None,
        "matmul_peak_tflops": round(peak / 1e12, 3),
        # FLOPs whole examples would need: above 1 means the shared prefix skipped work
        "effective_mfu_train_loop": round(flops / ours["loop_s"] / peak, 3),
    }
    if not args.skip_rss:
        result["peak_rss_mb"] = {m: peak_rss(data_dir, work, m) for m in ("lora", "qlora", "full")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
