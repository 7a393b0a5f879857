"""The real CLI on the built-in model: convert once, generate, prepare the example data, fail cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tuneforge(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # TUNEFORGE_DEBUG=1: an internal error is re-raised with its traceback instead of being
    # printed as one internal_error line, so "no Traceback" means no bug was hit, for failing
    # commands too (their exit code 2 and stable code are checked by each test)
    env = dict(os.environ) | {"HF_HUB_OFFLINE": "1", "TUNEFORGE_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)
    assert "Traceback" not in proc.stderr and "internal_error" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_builtin_model_is_converted_and_generates():
    listing = tuneforge("models").stdout
    assert "smollm2-135m" in listing
    text = tuneforge("generate", "--chat", "What is the capital of France?", "--max-new-tokens", "12").stdout
    assert "Paris" in text


def test_cached_model_folder_is_complete():
    from tuneforge.models.resolve import BUILTIN

    tuneforge("models")
    folder = BUILTIN["smollm2-135m"].cache_dir()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    generation = json.loads((folder / "generation_config.json").read_text())
    assert 2 in generation["eos_token_id"]  # <|im_end|>, the end of an assistant turn


def test_prepare_example_tickets(tmp_path):
    proc = tuneforge("prepare", "examples/support_tickets.jsonl", "--out", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "classification"
    assert set(report["labels"]) == {"billing", "technical", "account", "feature_request", "other"}
    assert report["records_out"] >= 600
    assert report["memorisation"]["checked"] > 0
    assert "report.md" in proc.stdout


def test_defects_exit_2_with_one_line_per_problem(tmp_path):
    proc = tuneforge("prepare", "tests/fixtures/defects.jsonl", "--out", str(tmp_path), "--no-memorisation-check",
                     check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tests/fixtures/defects.jsonl:")]
    assert len(lines) == 15
    assert "hint:" in proc.stderr and "--on-error drop" in proc.stderr


def test_bad_flags_and_missing_files_are_one_line_errors(tmp_path):
    proc = tuneforge("prepare", "nope.jsonl", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "file_not_found" in proc.stderr
    proc = tuneforge("prepare", "examples/support_tickets.jsonl", "--out", str(tmp_path), "--split", "0.9,0.9,0.1",
                     "--set", "sede=1", check=False)
    assert proc.returncode == 2
    assert "unknown_key" in proc.stderr and "invalid_value" in proc.stderr


def test_offline_hub_id_fails_at_once():
    proc = tuneforge("generate", "--model", "someorg/somemodel", "hi", check=False)
    assert proc.returncode == 2
    assert "model_not_found" in proc.stderr and "smollm2-135m" in proc.stderr
