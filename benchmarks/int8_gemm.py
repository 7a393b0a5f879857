"""Microbenchmark: int8 GEMMs (`torch._int_mm`) against float32 at the built-in model's shapes.

    python benchmarks/int8_gemm.py [--tokens 220] [--isa avx2]

For each linear shape of SmolLM2-135M ([tokens, in] x [in, out]): float32 `mm` (the
reference), `_int_mm` with the int8 weight row-major ([in, out] contiguous) and
column-major (a transposed view of the [out, in] weight, what `int8_base` uses), and
fbgemm's dynamic quantized linear (`quantized.linear_dynamic`, weight int8 per output
feature, the float input quantized per tensor to 7 bits inside the call, so its rate
includes that rounding); the best of 5 timings of 20 calls each, in G(FL)OP/s. `_int_mm`
is fast only where the CPU has VNNI; without it PyTorch falls back to a slow kernel, while
fbgemm has AVX2 kernels of its own. 220 tokens is a step of 8 short intent
queries with the shared prefix. Operands are random; `_int_mm`'s rounding costs are not
included (the training figures in pipeline_bench and train_bench carry those). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import isa_label, restart_with_avx2_kernels  # noqa: E402

SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (576, 192), "gate_proj/up_proj": (576, 1536),
          "down_proj": (1536, 576)}


def rate(fn, flops: int, calls: int = 20) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return round(flops * calls / best / 1e9, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=220)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    args = parser.parse_args()
    avx2 = args.isa == "avx2"
    if avx2:
        restart_with_avx2_kernels()
    import torch
    from lora_steps import fbgemm_pack

    torch.manual_seed(0)
    m = args.tokens
    result = {"isa": isa_label(avx2), "tokens": m, "gops": {}}
    for name, (k, n) in SHAPES.items():
        x, w = torch.randn(m, k), torch.randn(n, k)
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        wq = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        row_major = wq.t().contiguous()
        packed = fbgemm_pack(w)
        flops = 2 * m * k * n
        result["gops"][name] = {
            "fp32": rate(lambda: x @ w.t(), flops),
            "int8_row_major": rate(lambda: torch._int_mm(xq, row_major), flops),
            "int8_column_major": rate(lambda: torch._int_mm(xq, wq.t()), flops),
            "fbgemm_dynamic": rate(lambda: torch.ops.quantized.linear_dynamic(x, packed, True), flops),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
