"""Profile: where one LoRA training step's time goes, with and without the shared prefix.

    python benchmarks/step_profile.py [--data FOLDER] [--precision auto|bf16|fp32|int8] [--steps 8] [--isa avx2]

Trains `--steps` steps of batch 8 (after one warm-up step) from a prepared folder (default:
the demo's, `runs/demo/data`, which `make demo` writes) on the built-in model, as `tuneforge
train` builds it (LoRA r=16 on all linear layers, packing, fused LoRA), once with the
shared prefix and once without, from the same starting weights. `int8` trains with the
frozen base in int8 (`int8_base`); `--isa avx2` re-runs the profile with AVX2 kernels forced.
Prints the op table of a profiled step to stderr, then one JSON line: tokens/s of each side,
the share of step time in matrix products, and the loss of each step (the two sides should
agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_steps import lora_steps  # noqa: E402
from machine import isa_label, restart_with_avx2_kernels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32", "int8"), default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    args = parser.parse_args()
    avx2 = args.isa == "avx2"
    if avx2:
        restart_with_avx2_kernels()

    from torch.profiler import ProfilerActivity, profile

    from tuneforge.train import loop
    from tuneforge.train.collate import packed_batch
    from tuneforge.train.fused_lora import quantize_base
    from tuneforge.train.run import bf16_supported

    bf16 = bf16_supported("cpu") and not avx2 if args.precision == "auto" else args.precision == "bf16"
    int8 = args.precision == "int8"
    size = args.batch_size
    examples, plan, new_model = lora_steps(args.data, bf16, limit=size * (args.steps + 1))

    result = {"isa": isa_label(avx2), "precision": "int8" if int8 else "bf16" if bf16 else "fp32",
              "steps": args.steps, "batch_size": size}
    for share in (False, True):
        torch.manual_seed(0)
        model = new_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)
        batches = [packed_batch(examples[i:i + size], share_prefix=share) for i in range(0, len(examples), size)]
        if int8:  # smoothed on the batches it then trains on, as train does on its first examples
            quantize_base(model, lambda: [loop.token_logps(plan, model, b) for b in batches])
        losses = []

        def step(batch) -> None:
            logps, _, _ = loop.token_logps(plan, model, batch)
            loss = -logps.sum() / logps.numel()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(float(loss), 4))

        step(batches[0])
        start = time.perf_counter()
        for batch in batches[1:]:
            step(batch)
        seconds = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batches[1])
        table = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in table)
        matmul = sum(e.self_cpu_time_total for e in table if e.key in ("aten::mm", "aten::addmm", "aten::addmm_",
                                                                        "aten::bmm", "aten::_int_mm"))
        print(f"shared_prefix={share}\n{table.table(sort_by='self_cpu_time_total', row_limit=12)}", file=sys.stderr)
        name = "shared" if share else "unshared"
        result[name] = {
            "tokens_per_s": round(sum(b.real_tokens for b in batches[1:]) / seconds, 1),
            "row_tokens_per_step": round(sum(b.input_ids.shape[1] for b in batches[1:]) / args.steps, 1),
            "example_tokens_per_step": round(sum(b.real_tokens for b in batches[1:]) / args.steps, 1),
            "matmul_share": round(matmul / total, 3), "losses": losses[1:],
        }
    result["speedup"] = round(result["shared"]["tokens_per_s"] / result["unshared"]["tokens_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
