"""Checkpoints written atomically (temporary folder + rename), so a `kill -9` at any
moment leaves the last complete checkpoint usable; a retention limit keeps disk bounded."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step-"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Checkpoints:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{PREFIX}{step:07d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        torch.save(payload, tmp / "state.pt")
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
