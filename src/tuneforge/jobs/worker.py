"""The worker: takes jobs from the store's queue and trains each in a child process.

    worker = Worker(store, folders, publish=load_into_engine, concurrency=1)
    worker.start()      # puts back what a killed server left running, then polls every poll_s
    worker.stop()       # on shutdown: stops the children; their jobs resume at the next start

A job goes validating_files -> queued -> running -> succeeded | failed | cancelled, and
running <-> paused. Each poll the worker

1. validates new jobs against their files' stored validation (tuneforge.jobs.files): a bad
   file fails the job with the first bad lines in its error and every one in its events;
2. reads each child's output into the job: its messages, one metrics event per step
   (metrics.jsonl), a checkpoint per complete checkpoint folder, the estimated finish; and
   when the child has ended, the result: the adapter is handed to `publish` (the server
   loads it under the job's fine_tuned_model) before the job is marked succeeded;
3. starts queued jobs, in queue order, while fewer than `concurrency` run.

Cancel, pause and resume (`cancel`, `pause`, `resume`, from the routes) take effect before
they return: a running child is stopped at once (its checkpoints are atomic, so the last one
stays usable), what it wrote is read, and the job is cancelled, paused or queued again.

What the worker has read of a child's output (the cursor) is stored with each event in the
same transaction, so after a restart nothing is recorded twice or lost. A child is started
on the job's folder (tuneforge.jobs.child) and resumes from its last checkpoint, so a server
killed mid-job and started again finishes the job where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.jobs.files import Folders, describe
from tuneforge.jobs.store import FileRow, JobRow, Store, new_id

log = logging.getLogger("tuneforge.jobs")
STOP_GRACE_S = 10.0
MAX_EVENTS_PER_FILE = 1000  # bad lines listed one event each; past that, one event says how many more
RESULTS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def child_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "tuneforge.jobs.child", str(folder)]


@dataclass
class Running:
    job_id: str
    folder: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    first_step: tuple[int, float] | None = None  # (step, time) of the first step this child logged
    total_steps: int | None = None


class StateError(ValueError):
    """The job is in a state the asked-for change does not apply to."""


class Worker:
    def __init__(self, store: Store, folders: Folders, publish: Callable[[JobRow, Path], str | None] | None = None,
                 concurrency: int = 1, poll_s: float = 0.5, command: Callable[[Path], list[str]] | None = None):
        self.store, self.folders = store, folders
        self.publish = publish  # loads a finished job's adapter; returns why it could not, or None
        self.concurrency, self.poll_s, self.command = concurrency, poll_s, command
        self.running: dict[str, Running] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one poll at a time (the thread's, or a test's `poll()`)
        self._thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and stop the children; their jobs go back to the queue, in their old place."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for run in list(self.running.values()):
                self._kill(run)
                self._ingest(run)
                self.store.add_event(run.job_id, "The server is stopping; the job goes on from its last checkpoint "
                                     "when it starts again", status="queued")
            self.running.clear()

    def wake(self) -> None:
        """Poll now (a job was created, cancelled, paused or resumed)."""
        self._wake.set()

    def recover(self) -> None:
        """Jobs a killed server left running go back to the queue, in their old place."""
        for job in self.store.jobs_in("running"):
            self.store.add_event(job.id, "The server restarted; the job goes on from its last checkpoint",
                                 status="queued", estimated_finish=None)

    # -- what clients ask for (called from the routes, off the event loop) ----------------------

    def cancel(self, job_id: str) -> JobRow:
        return self._control(job_id, "cancel", ("validating_files", "queued", "running", "paused"))

    def pause(self, job_id: str) -> JobRow:
        return self._control(job_id, "pause", ("queued", "running"))

    def resume(self, job_id: str) -> JobRow:
        return self._control(job_id, "resume", ("paused",))

    def _control(self, job_id: str, action: str, allowed: tuple[str, ...]) -> JobRow:
        """Apply a cancel, pause or resume at once: a running child is stopped before this returns."""
        with self._lock:  # not during a poll: the job's state cannot change under us
            job = self.store.job(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.status not in allowed:
                raise StateError(f"Job {job_id} is {job.status}; only a job that is {' or '.join(allowed)} can be "
                                 f"{ {'cancel': 'cancelled', 'pause': 'paused', 'resume': 'resumed'}[action]}.")
            run = self.running.pop(job_id, None)
            if run is not None:
                self._kill(run)
                self._ingest(run)
            if action == "cancel":
                self.store.add_event(job_id, "Job cancelled", status="cancelled", finished_at=int(time.time()),
                                     estimated_finish=None)
            elif action == "pause":
                self.store.add_event(job_id, "Job paused; resume goes on from the last checkpoint", status="paused",
                                     estimated_finish=None)
            else:
                self.store.add_event(job_id, "Job resumed; queued again", status="queued", queued_at=time.time())
        self.wake()
        return self.store.job(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not end the worker: log it and go on
                log.exception("jobs worker poll failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def poll(self) -> None:
        with self._lock:
            if self._stop.is_set() and self._thread is not None:
                return
            for job in self.store.jobs_in("validating_files"):
                self._validate(job)
            for run in list(self.running.values()):
                self._watch(run)
            while len(self.running) < self.concurrency:
                job = self.store.next_queued()
                if job is None:
                    break
                self._launch(job)

    # -- validating_files --------------------------------------------------------------------

    def _validate(self, job: JobRow) -> None:
        spec = job.spec
        for param, file_id in (("training_file", spec.training_file), ("validation_file", spec.validation_file)):
            if file_id is None:
                continue
            row = self.store.file(file_id)
            if row is None:
                self._fail(job, "invalid_" + param, f"{param} {file_id} was deleted before the job started", param)
                return
            problem = self._file_problem(spec.method, row)
            if problem is not None:
                self._list_problems(job, param, row)
                self._fail(job, "invalid_" + param, f"The job failed due to an invalid {param.replace('_', ' ')} "
                           f"{row.id} ({row.filename}): {problem}", param)
                return
        self.store.add_event(job.id, "Validated the training file" + (" and the validation file" if spec.validation_file
                                                                      else ""))
        self.store.add_event(job.id, "Job queued", status="queued", queued_at=time.time())

    @staticmethod
    def _file_problem(method: str, row: FileRow) -> str | None:
        if row.problems:
            return describe(row.problems, row.records)
        if not row.records:
            return "the file holds no records"
        wanted = "preference" if method == "dpo" else "chat"
        if row.kind != wanted:
            need = ("preference pairs (prompt or messages, with chosen and rejected)" if method == "dpo"
                    else "chat examples (messages, prompt/completion, ...)")
            return f"method {method} needs {need}, but the file holds {row.kind} records"
        return None

    def _list_problems(self, job: JobRow, param: str, row: FileRow) -> None:
        for prob in row.problems[:MAX_EVENTS_PER_FILE]:
            where = f"line {prob['line']}" if prob["line"] else "the file"
            self.store.add_event(job.id, f"{param} {row.filename}: {where}: {prob['code']}: {prob['message']}",
                                 level="error", data={"file": row.id, "line": prob["line"], "code": prob["code"]})
        if len(row.problems) > MAX_EVENTS_PER_FILE:
            self.store.add_event(job.id, f"{param} {row.filename}: and {len(row.problems) - MAX_EVENTS_PER_FILE} "
                                 "more problems", level="error")

    # -- running -----------------------------------------------------------------------------

    def _launch(self, job: JobRow) -> None:
        folder = self.folders.run(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)
        files = {name: self.store.file(fid) if fid else None
                 for name, fid in (("training", job.spec.training_file), ("validation", job.spec.validation_file))}
        if files["training"] is None or (job.spec.validation_file and files["validation"] is None):
            self._fail(job, "invalid_training_file", "a file of this job was deleted before it started", "training_file")
            return
        (folder / "job.json").write_text(json.dumps({
            "job_id": job.id, "spec": job.spec.model_dump(mode="json"),
            "training_file": str(self.folders.file(files["training"])),
            "validation_files": [str(self.folders.file(files["validation"]))] if files["validation"] else []},
            indent=1) + "\n")
        with open(folder / "child.log", "ab") as out:
            process = subprocess.Popen((self.command or child_command)(folder), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "TUNEFORGE_JOB_ID": job.id})
        self.running[job.id] = Running(job.id, folder, process)
        self.store.add_event(job.id, "Fine-tuning job started", status="running")

    def _watch(self, run: Running) -> None:
        self._ingest(run)
        if run.process.poll() is None:
            return
        del self.running[run.job_id]
        self._ingest(run)
        self._finish(self.store.job(run.job_id), run)

    def _finish(self, job: JobRow, run: Running) -> None:
        try:
            result = json.loads((run.folder / "result.json").read_text())
        except (OSError, ValueError):
            tail = _tail(run.folder / "child.log")
            self._fail(job, "training_crashed", f"the training process ended with status {run.process.returncode} "
                       f"without a result; its last output: {tail}")
            return
        if not result.get("ok"):
            error = result.get("error") or {}
            for prob in result.get("problems", [])[1:MAX_EVENTS_PER_FILE]:
                where = f"{prob['where']}: " if prob.get("where") else ""
                self.store.add_event(job.id, f"{where}{prob['code']}: {prob['message']}", level="error")
            self._fail(job, error.get("code", "internal_error"), error.get("message", "the job failed"),
                       error.get("param"))
            return
        summary = json.loads((run.folder / "run" / "summary.json").read_text())
        results = self._results_file(job, run.folder / "run" / "metrics.jsonl")
        name = job.spec.model_name(job.id)
        why = self.publish(job, run.folder / "run") if self.publish is not None else None
        if why:
            self.store.add_event(job.id, f"The model was trained but this server cannot serve it: {why}; the run "
                                 f"folder is {run.folder / 'run'}", level="warn")
        self.store.add_event(job.id, f"New fine-tuned model created: {name}", data={"fine_tuned_model": name})
        self.store.add_event(job.id, "The job has successfully completed", status="succeeded", fine_tuned_model=name,
                             trained_tokens=summary.get("train_tokens"), result_files=[results],
                             finished_at=int(time.time()), estimated_finish=None)

    def _results_file(self, job: JobRow, metrics: Path) -> str:
        """OpenAI's results file: one CSV row per step, stored as a file of purpose fine-tune-results."""
        rows = [r for r in _metrics(metrics) if "loss" in r]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(RESULTS_COLUMNS)
        for r in rows:
            writer.writerow([r["step"], r["loss"], "", r.get("eval_loss", ""), ""])
        file_id = new_id("file-")
        stored = f"{file_id}.csv"
        (self.folders.files / stored).write_text(text.getvalue())
        self.store.add_file(FileRow(id=file_id, created_at=int(time.time()), filename="step_metrics.csv",
                                    bytes=len(text.getvalue().encode()), purpose="fine-tune-results", stored=stored,
                                    status="processed"))
        return file_id

    def _ingest(self, run: Running) -> None:
        """Copy what the child wrote since the last look into the job's events and checkpoints."""
        job = self.store.job(run.job_id)
        cursor = dict(job.cursor)
        offset = cursor.get("messages", 0)
        path = run.folder / "events.jsonl"
        if path.is_file() and path.stat().st_size > offset:
            with open(path, "rb") as handle:
                handle.seek(offset)
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # a line still being written
                    offset += len(raw)
                    cursor["messages"] = offset
                    msg = json.loads(raw)
                    self.store.add_event(run.job_id, msg["message"], level=msg.get("level", "info"), data=msg.get("data"),
                                         cursor=cursor)
        self._ingest_metrics(run, job, cursor)

    def _ingest_metrics(self, run: Running, job: JobRow, cursor: dict[str, Any]) -> None:
        folder = run.folder / "run"
        if run.total_steps is None and (folder / "config.yaml").is_file():
            run.total_steps = self._resolved(job, folder / "config.yaml")
        last = cursor.get("step", 0)
        rows = [r for r in _metrics(folder / "metrics.jsonl") if r.get("step", 0) > last and "loss" in r]
        total = run.total_steps
        for row in rows:
            step = row["step"]
            data = {"step": step, "train_loss": row["loss"], "total_steps": total,
                    "train_mean_token_accuracy": None}
            text = f"Step {step}/{total}: training loss={row['loss']:.4f}"
            if "eval_loss" in row:
                data["valid_loss"] = row["eval_loss"]
                text += f", validation loss={row['eval_loss']:.4f}"
            cursor["step"] = step
            self.store.add_event(run.job_id, text, kind="metrics", data=data, cursor=cursor,
                                 estimated_finish=self._eta(run, step, total))
        losses = {r["step"]: r for r in _metrics(folder / "metrics.jsonl") if "loss" in r}
        for ckpt in sorted((folder / "checkpoints").glob("step-*")):
            step = int(ckpt.name[5:]) if ckpt.name[5:].isdigit() else None
            if step is None or not (ckpt / "state.pt").is_file() or step <= cursor.get("checkpoint", 0):
                continue
            row = losses.get(step, {})
            metrics = {"step": float(step), "train_loss": row.get("loss"), "valid_loss": row.get("eval_loss")}
            cursor["checkpoint"] = step
            if self.store.add_checkpoint(run.job_id, step, metrics):
                self.store.add_event(run.job_id, f"Checkpoint created at step {step}", data={"step": step},
                                     cursor=cursor)

    def _resolved(self, job: JobRow, config: Path) -> int | None:
        """The hyperparameters training resolved ("auto" made concrete), kept for the job object."""
        try:
            values = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError):
            return None
        multiplier = job.spec.learning_rate_multiplier
        resolved = {"n_epochs": values.get("epochs"), "batch_size": values.get("batch_size"),
                    "learning_rate_multiplier": 1.0 if multiplier == "auto" else multiplier}
        self.store.update(job.id, resolved=resolved)
        return values.get("total_steps")

    @staticmethod
    def _eta(run: Running, step: int, total: int | None) -> int | None:
        now = time.monotonic()
        if run.first_step is None:
            run.first_step = (step, now)
            return None
        done = step - run.first_step[0]
        if not total or done <= 0:
            return None
        per_step = (now - run.first_step[1]) / done
        return int(time.time() + per_step * max(total - step, 0))

    # -- endings -----------------------------------------------------------------------------

    def _fail(self, job: JobRow, code: str, message: str, param: str | None = None) -> None:
        self.store.add_event(job.id, f"Fine-tuning job failed: {message}", level="error", status="failed",
                             error={"code": code, "message": message, "param": param}, finished_at=int(time.time()),
                             estimated_finish=None)

    def _kill(self, run: Running) -> None:
        """Stop a child and whatever it started (its own process group), at once."""
        if run.process.poll() is not None:
            return
        try:
            os.killpg(run.process.pid, signal.SIGTERM)
            run.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()
        except ProcessLookupError:
            pass


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(none)"
    return " | ".join(text[-lines:]) or "(none)"
