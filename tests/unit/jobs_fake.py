"""A fake job process for fast route, store and worker tests of the jobs API, and a live server
with the jobs API for those tests (`Server`).

It honours the contract of tuneforge.jobs.child without loading a model: it reads job.json and
writes what prepare and train would (events.jsonl messages, run/config.yaml with total_steps,
one metrics.jsonl row and one complete checkpoint per step, adapter/, summary.json) and then
result.json. It resumes after its last checkpoint, as `train --resume` does. Steps take
FAKE_STEP_S seconds (default 0.05); n_epochs x 4 steps. A training file whose name holds
"crash" makes it exit 3 without a result; one holding "refuse" writes a failed result.
(A training file whose text, not name, holds them.)

    python tests/unit/jobs_fake.py RUNS/<job id>
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

STEPS_PER_EPOCH = 4


def fake_command(folder: Path) -> list[str]:
    """The command the worker runs for a job (patched over tuneforge.jobs.worker.child_command)."""
    return [sys.executable, str(Path(__file__)), str(folder)]


class Server:
    """A live server with the jobs API on a given folder; restartable on the same folder."""

    def __init__(self, tokenizer, folder: Path, concurrency: int = 1, model: str | None = None):
        self.tokenizer, self.folder, self.concurrency, self.model = tokenizer, folder, concurrency, model

    def __enter__(self):
        from serve_fake import BASE, FakeEngine, live_server
        from tuneforge.jobs.config import JobsConfig
        from tuneforge.serve.config import ServeConfig

        self.engine = FakeEngine(self.tokenizer)
        config = ServeConfig(model=self.model or BASE, log_db=self.folder / "log.db",
                             jobs=JobsConfig(dir=self.folder / "jobs", concurrency=self.concurrency, poll_s=0.05,
                                             max_upload_bytes=64 * 1024))
        self._cm = live_server(config, self.engine)
        self.live = self._cm.__enter__()
        self.api = self.live.server.config.app.state.jobs
        self.client = self.live.client()
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def upload(client, text: str, name: str = "train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(text.encode())), purpose="fine-tune")


def wait_status(client, job_id: str, *statuses: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} is {job.status}, not {statuses}")


def events(client, job_id: str) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000))))


def main(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    spec = job["spec"]
    run = folder / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)

    def say(message: str, **data) -> None:
        with open(folder / "events.jsonl", "a") as handle:
            handle.write(json.dumps({"message": message, "level": "info", "data": data or None}) + "\n")

    if "crash" in Path(job["training_file"]).read_text():
        return 3
    if "refuse" in Path(job["training_file"]).read_text():
        (folder / "result.json").write_text(json.dumps({"ok": False, "error": {
            "code": "too_long", "message": "train.jsonl:2: too_long: 5000 tokens", "param": None},
            "problems": [{"code": "too_long", "message": "5000 tokens", "where": "train.jsonl:2"},
                         {"code": "too_long", "message": "6000 tokens", "where": "train.jsonl:3"}]}))
        return 2
    epochs = 3 if spec["n_epochs"] == "auto" else spec["n_epochs"]
    total = epochs * STEPS_PER_EPOCH
    done = sorted(int(p.name[5:]) for p in ckpts.glob("step-*") if (p / "state.pt").exists())
    start = done[-1] if done else 0
    say(f"Resuming training from checkpoint at step {start}" if start else "Training started")
    (run / "config.yaml").write_text(f"epochs: {epochs}\nbatch_size: 8\nlearning_rate: 0.0002\ntotal_steps: {total}\n")
    delay = float(os.environ.get("FAKE_STEP_S", "0.05"))
    for step in range(start + 1, total + 1):
        time.sleep(delay)
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "loss": round(2.0 / step, 4)}) + "\n")
        (ckpts / f"step-{step:07d}").mkdir(exist_ok=True)
        (ckpts / f"step-{step:07d}" / "state.pt").write_text("x")
    (run / "adapter").mkdir(exist_ok=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"train_tokens": 100 * total, "steps": total}))
    say("Training finished")
    (folder / "result.json").write_text(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
