"""Load a resolved model and its tokenizer, with the chat template and EOS that came with it."""

from __future__ import annotations

from functools import lru_cache

from tuneforge.models.resolve import resolve_model


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(name)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
