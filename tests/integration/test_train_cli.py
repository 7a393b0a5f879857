"""The real `tuneforge train` CLI in subprocesses, on the tiny model: a `kill -9` mid-run
then `--resume` ends with the same adapter as a run left alone, and the same loop runs
under `accelerate launch --num_processes 2` (DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROWS = [{"messages": [{"role": "user", "content": f"ticket {i}: thing number {i % 4} is broken"},
                      {"role": "assistant", "content": ["billing", "technical", "account", "other"][i % 4]}]}
        for i in range(80)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge.cli", *args]


@pytest.fixture(scope="module")
def data(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-cli")
    src = folder / "tickets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    subprocess.run(cli("prepare", str(src), "--out", str(folder / "data"), "--model", tiny_model,
                       "--no-memorisation-check"), check=True, capture_output=True)
    return folder / "data"


def train_args(tiny_model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", tiny_model, "--out", str(out), "--max-steps", "120",
            "--epochs", "20", "--set", "batch_size=2", "--set", "save_steps=3", "--set", "eval_steps=1000",
            "--set", "tracking=[]", *extra]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model, data, tmp_path):
    subprocess.run(cli(*train_args(tiny_model, data, tmp_path / "whole")), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(cli(*train_args(tiny_model, data, run)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("step-*/state.pt")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere in the middle of later steps or saves
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists(), "the run finished before it could be killed; make it longer"
    # debug mode shows the traceback of an internal error, so its absence means the refusal is a user error
    again = subprocess.run(cli(*train_args(tiny_model, data, run)), capture_output=True, text=True,
                           env={**os.environ, "TUNEFORGE_DEBUG": "1"})
    assert again.returncode == 2 and "run_exists" in again.stderr and "Traceback" not in again.stderr
    resumed = subprocess.run(cli(*train_args(tiny_model, data, run, "--resume")), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert max(float((whole[k] - after[k]).abs().max()) for k in whole) < 1e-5


# the launcher beside this interpreter first: `make test` runs .venv/bin/python without .venv/bin on PATH
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate launcher not installed")
def test_the_loop_runs_unchanged_under_accelerate_ddp(tiny_model, data, tmp_path):
    out = tmp_path / "ddp"
    # accelerate's --cpu launcher starts one process; the torchrun-based one (--multi_gpu) starts
    # two, and on a machine without GPUs the loop then runs DDP over gloo
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "tuneforge.cli",
           "train", "--data", str(data), "--model", tiny_model, "--out", str(out), "--max-steps", "6",
           "--set", "tracking=[]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6
    assert (out / "adapter" / "adapter_model.safetensors").exists()
