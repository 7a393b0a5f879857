"""Checkpoints written atomically (temporary folder + rename), so a `kill -9` at any
moment leaves the last complete checkpoint usable; a retention limit keeps disk bounded.

A checkpoint holds only tensors and plain values (numbers, strings, lists, dicts) and is
loaded with `torch.load(weights_only=True)`: a run folder copied from elsewhere must not
be able to run code when it is resumed. Next to `state.pt` each checkpoint keeps the
run's fingerprint (train/preflight.py), which `--resume` compares with the current run.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.outdir import writing

PREFIX = "step-"
FINGERPRINT = "fingerprint.json"
PAYLOAD_KEYS = ("weights", "optimizer", "scheduler", "rng", "state")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain lists (numpy's and Python's own
    state objects would need unsafe unpickling)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], np.asarray(numpy["keys"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: Any, path: Path) -> None:
    # through a Python file object: torch.save(obj, path) reports a full disk as an opaque
    # RuntimeError from its C++ writer, a file object as an OSError with errno ENOSPC
    with writing(path), open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _save(obj, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's payload, loaded safely; anything else is refused with a clear error."""
    path = folder / "state.pt"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words every refusal alike; one that names a Python object is the dangerous kind
        found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?(\S+)", str(exc))
        if not found:
            raise _corrupt(path, "not a checkpoint torch can read") from None
        what = f" ({found.group(1)})"
        raise TuneforgeError(Problem(
            "unsafe_checkpoint", f"the checkpoint holds Python objects{what}, not only tensors and plain values; "
            "loading it could run code, so it was not loaded. Resume only run folders tuneforge wrote, or start "
            "a new run with another --out", str(path))) from None
    except OSError:
        raise
    except Exception as exc:  # a truncated or foreign file: torch raises anything from KeyError to RuntimeError
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or any(key not in payload for key in PAYLOAD_KEYS):
        raise _corrupt(path, "it is not a tuneforge checkpoint")
    return payload


def _corrupt(path: Path, why: str) -> TuneforgeError:
    return TuneforgeError(Problem("corrupt_checkpoint", f"cannot read the checkpoint ({why}); delete this "
                                  "checkpoint folder to resume from an earlier one, or start a new run with "
                                  "another --out", str(path)))


class Checkpoints:
    def __init__(self, folder: Path, keep: int, fingerprint: dict[str, Any] | None = None):
        self.folder = folder
        self.keep = keep
        self.fingerprint = fingerprint

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{PREFIX}{step:07d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        try:
            _save(payload, tmp / "state.pt")
            if self.fingerprint is not None:
                with writing(tmp / FINGERPRINT):
                    (tmp / FINGERPRINT).write_text(json.dumps(self.fingerprint, indent=1) + "\n")
        except BaseException:
            # a half-written checkpoint is useless; on a full disk, removing it frees space at once
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{PREFIX}*") if (p / "state.pt").exists())

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def clean_partial(self) -> None:
        """Remove folders a killed save left behind."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(f".{PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
