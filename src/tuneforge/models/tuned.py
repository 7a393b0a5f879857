"""Load what the train stage wrote: a run folder, its adapter/ (PEFT) or model/ (full
fine-tuning), or a merged model folder. The tokenizer comes from the artifact, so prompts
are formatted exactly as in training."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import Problem, TuneforgeError


def artifact_dir(path: Path) -> Path:
    """The folder holding weights: RUN/adapter, RUN/model, or the path itself."""
    for candidate in (path / "adapter", path / "model", path):
        if (candidate / "adapter_config.json").exists() or (candidate / "config.json").exists():
            return candidate
    raise TuneforgeError(Problem("not_a_model", "no adapter/ or model/ here (nor adapter_config.json or "
                                 "config.json); pass a run folder written by `tuneforge train` or a model folder",
                                 str(path)))


def base_of(adapter: Path) -> str:
    """The base model an adapter was trained on, as recorded at export."""
    marker = adapter / "tuneforge.json"
    if marker.exists():
        return json.loads(marker.read_text())["base_model"]
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_tuned(path: Path, dtype: str = "float32", base: str | None = None):
    """(model, tokenizer) ready for inference; adapters stay unmerged (see `tuneforge merge`)."""
    from transformers import AutoTokenizer

    from tuneforge.models.load import load_model
    from tuneforge.models.template import ensure_pad

    folder = artifact_dir(Path(path))
    tokenizer = ensure_pad(AutoTokenizer.from_pretrained(str(folder)))
    if not (folder / "adapter_config.json").exists():
        return load_model(str(folder), dtype=dtype), tokenizer
    from peft import PeftModel

    base_model = load_model(base or base_of(folder), dtype=dtype)
    model = PeftModel.from_pretrained(base_model, str(folder))
    model.eval()
    return model, tokenizer
