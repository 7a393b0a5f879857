"""`tuneforge serve` as a user runs it: the real CLI in a subprocess on the built-in model, called
with the `openai` client. The greedy answer equals `tuneforge generate --chat`'s; SIGHUP
reloads the config's routes; SIGTERM drains and exits cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from tuneforge.models.generate import complete

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(client: openai.OpenAI, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else "(its output went to a file)"
            raise AssertionError(f"serve exited with {process.returncode}: {output}")
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            time.sleep(0.5)
    raise AssertionError("serve did not come up")


def ensure_stopped(process: subprocess.Popen) -> None:
    """Kill a server that a failing test left running."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def test_serve_cli_answers_like_generate_reloads_on_sighup_and_drains_on_sigterm(tmp_path: Path):
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"routes": {"support": {"variants": {MODEL: 100}}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEFORGE_DEBUG": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "serve", "--model", MODEL, "--config", str(config), "--port",
         str(port), "--api-key", "sk-test", "--log-db", str(tmp_path / "log.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=60)
    try:
        wait_healthy(client, process)
        question = "My card was charged twice, what should I do?"
        served = client.chat.completions.create(model="support", temperature=0, max_tokens=24,
                                                messages=[{"role": "user", "content": question}])
        assert served.model == MODEL
        assert served.choices[0].message.content == complete(MODEL, question, chat=True, max_new_tokens=24)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()

        config.write_text(yaml.safe_dump({"routes": {"support": {"variants": {MODEL: 100}},
                                                     "canary": {"variants": {MODEL: 100}}}}))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "canary" not in [m.id for m in client.models.list().data]:
            assert time.monotonic() < deadline, "SIGHUP did not reload the routes"
            time.sleep(0.2)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        ensure_stopped(process)
