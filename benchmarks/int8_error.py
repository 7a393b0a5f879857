"""Diagnostic: how far the int8 base moves LoRA's loss and gradients from float32.

    python benchmarks/int8_error.py [--data FOLDER] [--batches 8]

On the built-in model with LoRA as `tuneforge train` builds it (r=16, all linear layers,
packing, shared prefix, fused LoRA), adapter B set to small random values so every path
carries gradient, and the first 64 examples of a prepared folder (default: the demo's,
`runs/demo/data`) as the input ranges, as train reads them: the loss and the adapter
gradients of the next `--batches` batches of 8 with the base in float32, in int8 rounded
plainly, and in int8 smoothed (what `int8_base` runs). Prints one JSON line: for each int8
variant the mean relative error of the loss and of the gradient vector against float32.
Not a speed benchmark: it says what the rounding costs, one step at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_steps import lora_steps  # noqa: E402
from machine import cpu_isa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()

    from tuneforge.train import fused_lora, loop
    from tuneforge.train.collate import packed_batch
    from tuneforge.train.run import INT8_SAMPLES

    examples, plan, new_model = lora_steps(args.data, bf16=False)
    torch.manual_seed(0)
    model = new_model()
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.01

    def batches(start: int, stop: int):
        return [packed_batch(examples[i:i + 8], share_prefix=True) for i in range(start, stop, 8)]

    fused_lora.quantize_base(model, lambda: [loop.token_logps(plan, model, b) for b in batches(0, INT8_SAMPLES)])
    layers = [m for m in model.modules() if getattr(m, "_int8", None) is not None]
    smoothed = {m: m._int8 for m in layers}
    variants = {"fp32": {m: None for m in layers}, "int8_plain": {m: fused_lora.Int8Weight(m.base_layer.weight)
                                                                 for m in layers}, "int8_smoothed": smoothed}
    measured = batches(INT8_SAMPLES, INT8_SAMPLES + 8 * args.batches)
    params = [p for _, p in sorted(model.named_parameters()) if p.requires_grad]
    results = {}
    for name, weights in variants.items():
        for m in layers:
            m._int8 = weights[m]
        runs = []
        for batch in measured:
            logps, _, _ = loop.token_logps(plan, model, batch)
            loss = -logps.sum() / logps.numel()
            loss.backward()
            runs.append((float(loss), torch.cat([p.grad.flatten() for p in params])))
            for p in params:
                p.grad = None
        results[name] = runs
    ref = results.pop("fp32")
    out = {"isa": cpu_isa(), "data": str(args.data), "batches": len(measured), "layers": len(layers)}
    for name, runs in results.items():
        out[name] = {
            "loss_rel_err": round(sum(abs(a[0] - r[0]) / r[0] for a, r in zip(runs, ref)) / len(ref), 5),
            "grad_rel_err": round(sum(float((a[1] - r[1]).norm() / r[1].norm()) for a, r in zip(runs, ref))
                                  / len(ref), 4),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
