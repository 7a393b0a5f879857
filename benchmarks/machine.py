"""What every benchmark figure names: the CPU's vector extensions, since bf16 speed
depends on them (AVX512-BF16/AMX run bf16 matmuls natively; AVX2-only CPUs do not)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cpu_isa() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    # VNNI decides whether PyTorch's int8 GEMM is fast (without it, about 30x slower than float32)
    found = [f for f in ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2") if f in flags]
    return "+".join(found) or "baseline"


# Environment that makes this process's kernels take their AVX2 code paths on a CPU that has
# more (PyTorch's vectorized ops, MKL's GEMMs, oneDNN, fbgemm's int8 GEMMs), so an AVX2-only
# CPU's figures can be measured on an AVX512 one. It must be set before torch is imported.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}


def isa_label(forced_avx2: bool) -> str:
    """The `isa` a figure names: the CPU's, or `avx2` with the CPU it was forced on."""
    return f"avx2 (kernels forced, on {cpu_isa()})" if forced_avx2 else cpu_isa()


def restart_with_avx2_kernels() -> None:
    """Run this script again with AVX2_KERNELS set, unless they already are: the kernels are
    chosen when torch loads, so setting them later does nothing."""
    if any(os.environ.get(k) != v for k, v in AVX2_KERNELS.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_KERNELS})
