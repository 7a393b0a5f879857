"""The hosted fine-tuning guide's client code, run against tuneforge: upload, fine-tune, poll, chat.

    python examples/jobs_client.py --serve --out /tmp/jobs_transcript.txt    # starts `tuneforge serve` itself
    python examples/jobs_client.py --base-url http://127.0.0.1:8000/v1 --api-key sk-local   # a running server

Only `base_url` and `api_key` differ from code written for a hosted service. The training data
is 24 short support tickets made here (billing / technical / account), one epoch on the built-in
model, so the run takes a minute or two on a laptop CPU. Everything printed (the job, its events
oldest first, its checkpoints, the fine-tuned model's answers) is also written to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

TICKETS = {
    "billing": ["My card was charged twice", "I want a refund for last month", "Why is my invoice higher?",
                "Cancel my subscription payment", "The price on my bill is wrong", "I was billed after I cancelled",
                "Please send me a receipt", "Update my credit card details"],
    "technical": ["The app crashes when I open it", "The camera shows a black screen", "Login page does not load",
                  "Sync stopped working yesterday", "The device will not connect to wifi", "Error 500 on upload",
                  "Notifications never arrive", "The screen freezes after the update"],
    "account": ["How do I change my email address?", "I forgot my password", "Delete my account please",
                "How do I add a family member?", "My username is wrong", "Merge my two accounts",
                "I cannot verify my phone number", "Change the name on my profile"],
}
SYSTEM = "Classify the support ticket as billing, technical or account. Answer with the category only."


def training_jsonl() -> str:
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                          {"role": "assistant", "content": label}]}
            for label, texts in TICKETS.items() for text in texts]
    rows += rows[:8]  # 8 exact repeats, which prepare removes (see the events): 24 tickets, 3 steps of 8
    return "".join(json.dumps(r) + "\n" for r in rows)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, api_key: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "tuneforge.cli", "serve", "--port", str(port), "--api-key", api_key,
               "--log-db", str(folder / "log.db"), "--set", f"jobs.dir={folder / 'jobs'}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(folder / "serve.log", "w"),
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return process, f"http://127.0.0.1:{port}/v1"


def wait_up(client: OpenAI, process: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            client.models.list()
            return
        except Exception:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def run(client: OpenAI, say) -> None:
    # --- the guide's code, unchanged but for base_url and api_key ---
    training_file = client.files.create(file=("tickets.jsonl", io.BytesIO(training_jsonl().encode())),
                                        purpose="fine-tune")
    say(f"uploaded {training_file.id}: {training_file.filename}, {training_file.bytes} bytes, "
        f"status {training_file.status}")
    job = client.fine_tuning.jobs.create(training_file=training_file.id, model="smollm2-135m",
                                         hyperparameters={"n_epochs": 1}, suffix="tickets", seed=42)
    say(f"created {job.id}: status {job.status}")
    last = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != last:
            say(f"  {time.strftime('%H:%M:%S')} status {job.status}")
            last = job.status
    say("")
    say("job: " + json.dumps(job.model_dump(exclude_none=True), indent=2))
    say("")
    say("events (oldest first):")
    for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))):
        say(f"  {time.strftime('%H:%M:%S', time.localtime(event.created_at))} [{event.level}] {event.message}")
    say("")
    say("checkpoints:")
    for ckpt in client.fine_tuning.jobs.checkpoints.list(job.id):
        say(f"  step {ckpt.step_number}: {ckpt.fine_tuned_model_checkpoint} train_loss={ckpt.metrics.train_loss}")
    if job.status != "succeeded":
        raise SystemExit(f"the job {job.status}: {job.error}")
    say("")
    say(f"models: {[m.id for m in client.models.list()]}")
    for ticket in ("I was charged twice this month", "The app keeps crashing on start", "How do I reset my password?"):
        completion = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=8,
                                                    messages=[{"role": "system", "content": SYSTEM},
                                                              {"role": "user", "content": ticket}])
        say(f"chat {job.fine_tuned_model}: {ticket!r} -> {completion.choices[0].message.content!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("TUNEFORGE_API_KEY", "sk-local"))
    parser.add_argument("--serve", action="store_true", help="start `tuneforge serve` on a free port for the run")
    parser.add_argument("--out", type=Path, help="also write the transcript here")
    args = parser.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    process = None
    with tempfile.TemporaryDirectory(prefix="tuneforge-jobs-") as tmp:
        base_url = args.base_url
        if args.serve:
            process, base_url = start_server(Path(tmp), args.api_key)
        client = OpenAI(base_url=base_url, api_key=args.api_key)
        try:
            wait_up(client, process)
            say(f"# tuneforge fine-tuning jobs API at {base_url}")
            run(client, say)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
