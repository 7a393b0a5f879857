"""What every benchmark figure names: the CPU's vector extensions, since bf16 speed
depends on them (AVX512-BF16/AMX run bf16 matmuls natively; AVX2-only CPUs do not)."""

from __future__ import annotations

from pathlib import Path


def cpu_isa() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    found = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return "+".join(found) or "baseline"
