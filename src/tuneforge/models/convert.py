"""GGUF -> safetensors model folder, written atomically into the model cache.

transformers de-quantizes a GGUF file to float32 but refuses to save such a
model, so we rebuild a plain model from its config and copy the weights over.
The folder is written under a temporary name and renamed at the end, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Convert `gguf_path` into a model folder at `target` unless it is already there."""
    if (target / "config.json").exists():
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from tuneforge.models.template import ensure_pad, stop_ids

        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = gguf_path.stem
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        del loaded

        ensure_pad(tokenizer)
        stops = stop_ids(tokenizer)
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=stops or config.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
