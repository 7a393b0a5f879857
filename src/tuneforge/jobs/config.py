"""The jobs API's settings: the `jobs:` section of the serve config (tuneforge.serve.config).

    tuneforge serve --set jobs.concurrency=2 --set jobs.dir=/data/tuneforge-jobs
    tuneforge serve --set jobs.enabled=false        # generation only, no fine-tuning routes
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tuneforge.config import Strict
from tuneforge.paths import home


def default_jobs_dir() -> Path:
    return home() / "jobs"


class JobsConfig(Strict):
    enabled: bool = Field(True, description="serve /v1/files and /v1/fine_tuning/jobs and run the jobs")
    dir: Path = Field(default_factory=default_jobs_dir, description="jobs.db (SQLite), uploaded files, job folders")
    concurrency: int = Field(1, ge=1, le=64, description="jobs trained at the same time (each is a process)")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="larger uploads to /v1/files get 413")
    poll_s: float = Field(0.5, gt=0, le=10, description="how often the worker looks at its jobs")
