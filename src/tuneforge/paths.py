"""Where tuneforge keeps its cache: $TUNEFORGE_HOME, else ~/.cache/tuneforge."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("TUNEFORGE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tuneforge"


def models_dir() -> Path:
    return home() / "models"
