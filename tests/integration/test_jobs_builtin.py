"""The fine-tuning jobs API as a user runs it: `tuneforge serve` in a subprocess on the built-in
model, called with the hosted guide's `openai` code (only base_url and api_key differ), with real
prepare + train in the job processes. Also a DPO job, a bad file's line-numbered failure, cancel,
pause/resume, and a server killed with -9 mid-job whose job resumes from its checkpoint."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from test_serve_cli import free_port, wait_healthy

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
KEY = "sk-test"
# kept small: every step of a job writes a checkpoint, and the suite runs on 2 CPU cores
LABELS = {"billing": ["My card was charged twice", "Refund my last payment", "My invoice is wrong",
                      "I was billed after cancelling"],
          "technical": ["The app crashes on start", "The camera shows black", "Login page will not load",
                        "Sync stopped working"],
          "account": ["Change my email address", "I forgot my password", "Delete my account",
                      "Add a family member"]}


def chats(repeat: int = 1, tag: str = "") -> str:
    rows = [{"messages": [{"role": "user", "content": f"{text}{tag}{'' if r == 0 else f' ({r})'}"},
                          {"role": "assistant", "content": label}]}
            for r in range(repeat) for label, texts in LABELS.items() for text in texts]
    return "".join(json.dumps(row) + "\n" for row in rows)


def pairs() -> str:
    rows = [{"prompt": text, "chosen": label, "rejected": "I cannot help with that."}
            for label, texts in LABELS.items() for text in texts[:2]]
    return "".join(json.dumps(row) + "\n" for row in rows)


class Serve:
    """`tuneforge serve` on a free port, its jobs in `folder`; start() again after a kill."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=0,
                                    timeout=120)

    def start(self) -> "Serve":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEFORGE_DEBUG": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "serve", "--model", MODEL, "--port", str(self.port), "--api-key",
             KEY, "--log-db", str(self.folder / "log.db"), "--set", f"jobs.dir={self.folder / 'jobs'}",
             "--set", "jobs.poll_s=0.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)  # read if it fails to start
        wait_healthy(self.client, self.process)
        return self

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(timeout=120) == 0
            finally:
                if self.process.poll() is None:
                    self.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve = Serve(tmp_path_factory.mktemp("jobs-serve")).start()
    try:
        yield serve
    finally:
        serve.stop()


def events(client, job_id: str) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000))))


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def finished(client, job_id: str, timeout: float = 600):
    return wait_until(lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in
                      ("succeeded", "failed", "cancelled") and job, timeout, f"{job_id} to finish")


def test_the_guides_client_code_fine_tunes_and_serves_the_model(server):
    client = server.client
    # --- as in the guide ---
    training = client.files.create(file=("tickets.jsonl", io.BytesIO(chats().encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL, hyperparameters={"n_epochs": 1})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    answer = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=4,
                                            messages=[{"role": "user", "content": "My card was charged twice"}])
    # ---
    assert job.fine_tuned_model == f"ft:{MODEL}::{job.id}"
    assert answer.model == job.fine_tuned_model and answer.choices[0].message.content
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 8
    log = events(client, job.id)
    messages = [e.message for e in log]
    assert messages[:3] == [f"Created fine-tuning job: {job.id}", "Validated the training file", "Job queued"]
    assert any(m.startswith("Prepared 12 of 12 records") for m in messages)
    steps = [e.data["step"] for e in log if e.type == "metrics"]
    assert steps == [1, 2] and all(e.data["train_loss"] > 0 for e in log if e.type == "metrics")
    assert messages[-1] == "The job has successfully completed"
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in ckpts] == [1] and ckpts[0].metrics.train_loss > 0


def test_a_bad_file_fails_validation_with_its_line_numbers(server):
    client = server.client
    lines = chats().splitlines()
    bad = "\n".join(lines[:3] + ['{"messages": [{"role": "user", "content": "no answer"}]}', "not json"] + lines[3:])
    training = client.files.create(file=("bad.jsonl", io.BytesIO(bad.encode())), purpose="fine-tune")
    assert training.status == "error"
    job = finished(client, client.fine_tuning.jobs.create(training_file=training.id, model=MODEL).id, 60)
    assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "2 of 14 lines are bad: line 4: " in job.error.message and "line 5: invalid_json" in job.error.message
    assert [e.data["line"] for e in events(client, job.id) if e.level == "error" and e.data] == [4, 5]


def test_a_dpo_job_on_preference_pairs(server):
    client = server.client
    training = client.files.create(file=("pairs.jsonl", io.BytesIO(pairs().encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL, suffix="dpo", method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 3}}})  # 6 pairs
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.fine_tuned_model == f"ft:{MODEL}:dpo:{job.id}"
    assert [e.data["step"] for e in events(client, job.id) if e.type == "metrics"] == [1, 2]
    config = (server.folder / "jobs" / "runs" / job.id / "run" / "config.yaml").read_text()
    assert "objective: dpo" in config and "beta: 0.2" in config


def test_cancel_stops_training_promptly_and_keeps_the_events(server):
    client = server.client
    training = client.files.create(file=("more.jsonl", io.BytesIO(chats(repeat=4).encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL, hyperparameters={"n_epochs": 3})
    wait_until(lambda: any(e.type == "metrics" for e in events(client, job.id)), 300, "the first step")
    started = time.monotonic()
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert time.monotonic() - started < 15
    steps = [e for e in events(client, job.id) if e.type == "metrics"]
    time.sleep(3)
    assert [e for e in events(client, job.id) if e.type == "metrics"] == steps  # nothing trains on
    assert events(client, job.id)[-1].message == "Job cancelled"
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def test_pause_resume_and_a_kill_9_restart_resume_from_checkpoints(server):
    """Last in this module: it kills the module's server and starts it again on the same folders."""
    client = server.client
    training = client.files.create(file=("t.jsonl", io.BytesIO(chats().encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL,
                                         hyperparameters={"n_epochs": 1, "batch_size": 2}, suffix="restart")
    total = 6  # 12 examples, 2 per step

    def checkpoints():
        return [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]

    wait_until(lambda: checkpoints(), 300, "a checkpoint")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    paused_at = max(checkpoints())
    assert paused_at <= total - 3, "paused too late to test a resume and a restart; make the job longer"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    wait_until(lambda: max(checkpoints()) > paused_at, 300, "a checkpoint after the resume")
    server.kill9()  # mid-job: the server and (within a second) its job process die
    server.start()
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in events(client, job.id)]
    assert f"Resuming training from checkpoint at step {paused_at}" in messages
    assert "The server restarted; the job goes on from its last checkpoint" in messages
    assert sum(m.startswith("Resuming training from checkpoint") for m in messages) == 2
    assert [e.data["step"] for e in events(client, job.id) if e.type == "metrics"] == list(range(1, total + 1))
    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                            messages=[{"role": "user", "content": "Delete my account"}])
    assert answer.model == f"ft:{MODEL}:restart:{job.id}"
    # every model the earlier jobs made is served again after the restart
    assert sum(m.id.startswith("ft:") for m in client.models.list()) == 3
