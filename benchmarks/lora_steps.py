"""What the step-level benchmarks share: chat examples from a prepared folder, the built-in
model with LoRA as `tuneforge train` builds it (r=16 on all linear layers, packing, fused
LoRA), the plan `loop.token_logps` reads, and fbgemm's packed int8 weight."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch


def lora_steps(data: Path, bf16: bool, limit: int | None = None) -> tuple[list, SimpleNamespace, Callable]:
    """(the chat examples of the first `limit` rows of `data`'s train split, the plan,
    a function building a fresh model); seed torch before each build for equal weights."""
    from transformers import AutoTokenizer

    from tuneforge.models import resolve_model
    from tuneforge.train import data as datasets
    from tuneforge.train.collate import Encoder
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.methods import build_model

    model_path = str(resolve_model("smollm2-135m"))
    encoder = Encoder(AutoTokenizer.from_pretrained(model_path), 2048)
    _, rows, _ = datasets.read_prepared(data)
    examples = [e for e in (encoder.chat(r["messages"]) for r in rows[:limit]) if e is not None]
    cfg = TrainConfig(data=data, out=Path("unused"), method="lora", tracking=[])
    plan = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), virtual_tokens=0, bf16=bf16)
    return examples, plan, lambda: build_model(cfg, model_path, "cpu", bf16, packing=True)


def fbgemm_pack(weight: torch.Tensor):
    """`weight` [out, in] in int8, one scale per output feature, packed for fbgemm's linear."""
    scale = weight.abs().amax(1).clamp(min=1e-12) / 127
    with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm is only reachable through them
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(weight, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)
