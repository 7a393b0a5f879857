"""One fine-tuning job, in a process of its own: prepare, then train, in the job's folder.

    python -m tuneforge.jobs.child RUNS/<job id>       # started by tuneforge.jobs.worker

The folder holds `job.json` (written by the worker: the input files and the train stage's
config values); this process writes `data/` (the prepare stage's folder), `run/` (the train
stage's run folder: metrics.jsonl, checkpoints/, adapter/, summary.json), `events.jsonl`
(messages for the job's events) and, last, `result.json`: {"ok": true} or {"ok": false,
"error": {"code", "message", "param"}}.

Started again on the same folder it picks up where the last one stopped: a prepared
dataset is kept, and training resumes from the last complete checkpoint (train --resume).
A lock on the folder keeps two of them from ever training it at once, and the process ends
itself when the server that started it is gone (killed with -9, say), so a restarted server
can take the job over.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError

LOCK_WAIT_S = 120.0
FAILED_EXIT = 2


class Say:
    """Messages for the job's events (the worker copies them into the store)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str, level: str = "info", **data: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"message": message, "level": level, "data": data or None}) + "\n")


def _watch_parent() -> None:
    """Exit when the server that started us is gone: its job will be resumed by the next one."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(FAILED_EXIT)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _lock(folder: Path):
    handle = open(folder / ".lock", "w")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:  # a child of a killed server has not noticed yet; it will exit shortly
            if time.monotonic() > deadline:
                raise TuneforgeError(Problem("job_locked", "another process is still training this job", str(folder)))
            time.sleep(0.2)


def prepared(data: Path) -> bool:
    try:
        return json.loads((data / "report.json").read_text())["status"] == "ok" and (data / "train.jsonl").is_file()
    except (OSError, ValueError, KeyError):
        return False


def run_job(folder: Path) -> dict[str, Any]:
    """Prepare and train the job in `folder`; returns the train stage's summary."""
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.jobs.spec import JobSpec
    from tuneforge.train.checkpoint import Checkpoints
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    job = json.loads((folder / "job.json").read_text())
    spec = JobSpec.model_validate(job["spec"])
    say = Say(folder / "events.jsonl")
    data, run = folder / "data", folder / "run"
    if not prepared(data):
        say("Preparing the data: validating, removing exact duplicates, tokenizing")
        report = prepare(PrepareConfig(
            inputs=[Path(job["training_file"])], val=[Path(v) for v in job["validation_files"]], out=data,
            model=spec.train_model, split=(1.0, 0.0, 0.0), seed=spec.seed,
            on_contradiction="keep", memorisation_check=False))
        dropped = report["duplicates"]["exact"]
        say(f"Prepared {report['records_out']} of {report['records_in']} records ({report['kind']}, task "
            f"{report['task']}; {report['splits']['train']} to train on, {report['splits']['val']} to validate)"
            + (f"; {dropped} exact duplicates removed" if dropped else ""),
            records_in=report["records_in"], records_out=report["records_out"], splits=report["splits"],
            exact_duplicates=dropped, tokens=report["token_lengths"])
    latest = Checkpoints(run / "checkpoints", 1).latest()
    if latest is not None:
        say(f"Resuming training from checkpoint at step {int(latest.name[5:])}", step=int(latest.name[5:]))
    else:
        say("Training started")
    cfg = TrainConfig(**spec.train_values(), data=data, out=run, resume=latest is not None)
    summary = train(cfg, progress=False)
    say(f"Training finished: {summary['steps']} steps, {summary['train_tokens']} tokens in "
        f"{summary['train_seconds']:.1f} s", steps=summary["steps"], train_tokens=summary["train_tokens"])
    return summary


def _result(folder: Path, result: dict[str, Any]) -> None:
    tmp = folder / ".result.json.tmp"
    tmp.write_text(json.dumps(result) + "\n")
    tmp.replace(folder / "result.json")


def main(argv: list[str] | None = None) -> int:
    from tuneforge.cli import _quiet_libraries

    folder = Path((argv or sys.argv[1:])[0])
    _watch_parent()
    _quiet_libraries()
    try:
        lock = _lock(folder)
        try:
            run_job(folder)
        finally:
            lock.close()
    except TuneforgeError as exc:
        first = exc.problems[0]
        message = "; ".join(p.line() for p in exc.problems[:5]) + (f" (and {len(exc.problems) - 5} more)"
                                                                   if len(exc.problems) > 5 else "")
        _result(folder, {"ok": False, "error": {"code": first.code, "message": message, "param": None},
                         "problems": [{"code": p.code, "message": p.message, "where": p.where}
                                      for p in exc.problems]})
        return FAILED_EXIT
    except Exception as exc:  # a bug: said plainly, the traceback in the job's log
        import traceback

        traceback.print_exc()
        _result(folder, {"ok": False, "error": {"code": "internal_error", "message": f"{type(exc).__name__}: "
                                                f"{exc} (a tuneforge bug; the traceback is in child.log)",
                                                "param": None}})
        return 1
    _result(folder, {"ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
