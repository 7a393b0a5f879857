"""Load a resolved model and its tokenizer, with the chat template and EOS that came with it."""

from __future__ import annotations

from functools import lru_cache

from tuneforge.models.resolve import resolve_model
from tuneforge.models.template import ensure_pad


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return ensure_pad(AutoTokenizer.from_pretrained(str(resolve_model(name))))


def load_model(name: str, dtype: str = "float32", device: str = "cpu", quantization=None):
    """Load weights for causal-LM use; `quantization` is a transformers quantization config."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": getattr(torch, dtype)}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model(name)), **kwargs)
    if quantization is None:
        model.to(device)
    model.eval()
    return model
