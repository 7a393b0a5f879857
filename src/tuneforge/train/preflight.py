"""Checks a train run makes before any model loads: the run folder can be written, and a
resumed run still has the config and data its checkpoint was trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.train.checkpoint import FINGERPRINT
from tuneforge.train.config import TrainConfig

# Keys that may change on --resume without changing what is learned: where the run lives
# and how it is watched (out, resume, tracking), when checkpoints are written and how many
# are kept, and compile (speed only). Data folders may move, so their paths are left out
# too; what they hold is compared by content hash instead.
NOT_FINGERPRINTED = {"out", "resume", "tracking", "save_steps", "save_total_limit", "compile", "shared_prefix", "data", "datasets"}
DATA_FILES = ("train.jsonl", "val.jsonl")
_UNSET = object()


def check_out(out: Path) -> None:
    """The run folder must be a folder we can write in; say so before minutes of loading."""
    problems = outdir.check_out(out)
    if problems:
        raise TuneforgeError(problems)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What a run's checkpoints depend on: the training-relevant config values (kept as
    values, not one hash, so a mismatch can name the keys) and the sha256 of each data file."""
    values = json.loads(cfg.model_dump_json())
    config = {k: v for k, v in _flat(values).items() if k.split(".")[0] not in NOT_FINGERPRINTED}
    for i, entry in enumerate(values["datasets"]):
        config[f"datasets[{i}].weight"] = entry["weight"]
    folders = {"": cfg.data} if cfg.data is not None else {f"datasets[{i}]/": d.path for i, d in enumerate(cfg.datasets)}
    data = {}
    for label, folder in folders.items():
        for name in DATA_FILES:
            path = Path(folder) / name
            if path.is_file():
                data[label + name] = {"path": str(path), "sha256": _sha256(path)}
    return {"version": 1, "config": config, "data": data}


def check_resume(checkpoint: Path, current: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint with other settings or data: the result would be
    neither the old run nor a new one, and nothing would say so."""
    stored_path = checkpoint / FINGERPRINT
    todo = "resume with the config and data this run started with, or start a new run with another --out"
    if not stored_path.is_file():
        raise TuneforgeError(Problem("resume_mismatch", f"checkpoint {checkpoint.name} has no {FINGERPRINT} (an "
                                     f"older tuneforge wrote it), so it cannot be checked against this config and "
                                     f"data; start a new run with another --out", str(checkpoint)))
    try:
        stored = json.loads(stored_path.read_text())
        before, before_data = stored["config"], stored["data"]
    except (ValueError, KeyError, TypeError):
        raise TuneforgeError(Problem("resume_mismatch", f"{FINGERPRINT} is unreadable, so this checkpoint cannot "
                                     "be checked against this config and data; start a new run with another --out",
                                     str(stored_path))) from None
    now, now_data = current["config"], current["data"]
    differences = [f"{key} ({_show(before, key)} then, {_show(now, key)} now)"
                   for key in sorted(set(before) | set(now)) if before.get(key, _UNSET) != now.get(key, _UNSET)]
    for name in sorted(set(before_data) | set(now_data)):
        old, new = before_data.get(name), now_data.get(name)
        if old is None:
            differences.append(f"{new['path']} (new since the checkpoint)")
        elif new is None:
            differences.append(f"{old['path']} (gone since the checkpoint)")
        elif old["sha256"] != new["sha256"]:
            differences.append(f"{new['path']} (content changed)")
    if differences:
        raise TuneforgeError(Problem("resume_mismatch", f"the config or data differ from checkpoint "
                                     f"{checkpoint.name}: {'; '.join(differences)}. To continue this run, {todo}",
                                     str(checkpoint.parent.parent)))



def _show(values: dict[str, Any], key: str) -> str:
    return json.dumps(values[key]) if key in values else "unset"
