"""Benchmark: two levers for float32 LoRA training on CPUs without bf16, against plain float32.

    python benchmarks/cpu_levers.py [--data FOLDER] [--steps 10] [--rounds 3] [--skip-compile] [--isa avx2]

On the built-in model as `tuneforge train` builds it (LoRA r=16 on all linear layers,
packing, shared prefix, fused LoRA), batches of 8 from a prepared folder (default: the
demo's, `runs/demo/data`, which `make demo` writes). After one float32 warm-up step (so the
adapters' B is no longer zero and every path carries gradient), each side starts from the
same weights and optimizer state and trains the same `--steps` batches:

- `fp32`: the reference, what `tuneforge train` runs where the CPU has no bf16 and no VNNI.
- `fbgemm_input_grad`: the frozen base's backward product (grad @ W, half of the base's
  products) through fbgemm's int8 linear, which has AVX2 kernels of its own (PyTorch's
  `_int_mm`, which `int8_base` uses, needs VNNI). fbgemm rounds its input with one scale per
  tensor to 7 bits, so each gradient row is divided by its own largest value first (per-row
  rounding); the forward stays float32, so only the adapters' gradients move (and, through
  the updates, the later losses).
- `compile`: the model through `torch.compile` (inductor, dynamic shapes); its first step
  includes the compile and is reported apart.

The first step of each side is not timed. The sides run `--rounds` times, alternately (the
machine's speed drifts; each side's tokens/s is its median round); the compiled model is
compiled once, in its first round's first step. Prints one JSON line: each side's tokens/s
(every round's, and the median's ratio to fp32), and from its first round the losses, the
first step's seconds (the compile's, for `compile`) and the relative error of the adapters'
gradient vector against fp32's on the first batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_steps import fbgemm_pack, lora_steps  # noqa: E402
from machine import isa_label, restart_with_avx2_kernels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class FbgemmInputGrad:
    """Stands where `fused_lora.Int8Weight` does: float32 forward, int8 input gradient."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach()
        self.packed_t = fbgemm_pack(self.weight.t().contiguous())  # grad @ W == linear(grad, W.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        scale = grad.abs().amax(-1, keepdim=True).clamp_(min=1e-12)
        return torch.ops.quantized.linear_dynamic(grad / scale, self.packed_t, True).mul_(scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="the sides run alternately this often "
                        "(tokens/s: the median)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (minutes to compile)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    args = parser.parse_args()
    avx2 = args.isa == "avx2"
    if avx2:
        restart_with_avx2_kernels()

    from tuneforge.train import loop
    from tuneforge.train.collate import packed_batch

    examples, plan, new_model = lora_steps(args.data, bf16=False, limit=8 * (args.steps + 2))
    batches = [packed_batch(examples[i:i + 8], share_prefix=True) for i in range(0, len(examples), 8)]
    torch.manual_seed(0)
    model = new_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, fused=True)
    layers = [m for m in model.modules() if hasattr(m, "_int8")]

    def step(net, batch) -> tuple[float, torch.Tensor]:
        logps, _, _ = loop.token_logps(plan, net, batch)
        loss = -logps.sum() / logps.numel()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in params])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return round(float(loss.detach()), 4), grads

    step(model, batches[0])
    start_weights = [p.detach().clone() for p in params]
    start_state = copy.deepcopy(optimizer.state_dict())
    measured = batches[1:args.steps + 2]
    tokens = sum(b.real_tokens for b in measured[1:])

    def side(net) -> dict:
        with torch.no_grad():
            for p, w in zip(params, start_weights):
                p.copy_(w)
        optimizer.load_state_dict(copy.deepcopy(start_state))
        began = time.perf_counter()
        loss, grads = step(net, measured[0])
        first = time.perf_counter() - began
        losses = [loss]
        began = time.perf_counter()
        losses += [step(net, b)[0] for b in measured[1:]]
        return {"tokens_per_s": round(tokens / (time.perf_counter() - began), 1), "first_step_s": round(first, 1),
                "losses": losses, "grads": grads}

    kernels = {m: FbgemmInputGrad(m.base_layer.weight) for m in layers}
    nets = {"fp32": model, "fbgemm_input_grad": model}
    if not args.skip_compile:
        nets["compile"] = torch.compile(model, dynamic=True)  # compiles on its first call
    rounds: dict[str, list[dict]] = {name: [] for name in nets}
    for _ in range(args.rounds):  # alternated, so a drift in the machine's speed hits every side alike
        for name, net in nets.items():
            for m in layers:
                m._int8 = kernels[m] if name == "fbgemm_input_grad" else None
            rounds[name].append(side(net))
    sides = {}
    for name, runs in rounds.items():
        rates = sorted(r["tokens_per_s"] for r in runs)
        sides[name] = {**runs[0], "tokens_per_s": rates[len(rates) // 2], "rounds_tokens_per_s": rates}
    ref, ref_grads = sides["fp32"], sides["fp32"]["grads"]
    result = {"isa": isa_label(avx2), "precision": "fp32", "data": str(args.data), "steps": args.steps,
              "batch_size": 8, "example_tokens_per_step": round(tokens / args.steps, 1), "sides": {}}
    for name, got in sides.items():
        grads = got.pop("grads")
        got["vs_fp32"] = round(got["tokens_per_s"] / ref["tokens_per_s"], 3)
        got["grad_rel_err"] = round(float((grads - ref_grads).norm() / ref_grads.norm()), 4)
        result["sides"][name] = got
    print(json.dumps(result))


if __name__ == "__main__":
    main()
