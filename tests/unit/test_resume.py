"""Resuming and the run folder on the tiny model: --resume refuses another config or other
data, loads checkpoints safely, survives a torn metrics line; a full disk and a bad --out
are clear errors, not tuneforge bugs."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge import cli
from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.outdir import disk_full
from tuneforge.train import checkpoint
from tuneforge.train.checkpoint import Checkpoints, rng_state, set_rng_state
from tuneforge.train.config import TrainConfig
from tuneforge.train.run import train
from tuneforge.train.track import Tracker, plot_losses

LABELS = ["billing", "technical", "account", "other"]
TORN = '{"step": 3, "epoch": 0.75, "lo'


@pytest.fixture(scope="module")
def data(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume-data")
    src = folder / "tickets.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"ticket {i}: {label} problem"},
                                                     {"role": "assistant", "content": label}]}) + "\n"
                           for i, label in enumerate(LABELS * 10)))
    prepare(PrepareConfig(inputs=[src], out=folder / "data", model=tiny_model, memorisation_check=False,
                          max_seq_len=256))
    return folder / "data"


def config(tiny_model, data, out, **kw) -> TrainConfig:
    base = dict(model=tiny_model, data=data, out=out, max_steps=4, epochs=1, batch_size=4, eval_steps=2,
                save_steps=2, tracking=[])
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tiny_model, data, tmp_path_factory) -> Path:
    """A 4-step run with a checkpoint at step 2; tests resume copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(tiny_model, data, run), progress=False)
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-0000002"]
    return run


@pytest.fixture()
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def error_of(call) -> TuneforgeError:
    with pytest.raises(TuneforgeError) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------- fingerprint


def test_resume_with_another_config_is_refused_naming_the_keys(tiny_model, data, run):
    error = error_of(lambda: train(config(tiny_model, data, run, resume=True, learning_rate=0.001,
                                          lora={"r": 4}), progress=False))
    problem = error.problems[0]
    assert problem.code == "resume_mismatch" and problem.where == str(run)
    assert "learning_rate (\"auto\" then, 0.001 now)" in problem.message
    assert "lora.r (16 then, 4 now)" in problem.message and "seed" not in problem.message
    assert "another --out" in problem.message


def test_resume_with_other_data_is_refused_naming_the_file(tiny_model, data, run, tmp_path):
    moved = tmp_path / "moved-data"
    shutil.copytree(data, moved)
    lines = (moved / "train.jsonl").read_text().splitlines()
    (moved / "train.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    error = error_of(lambda: train(config(tiny_model, moved, run, resume=True), progress=False))
    assert error.problems[0].code == "resume_mismatch"
    assert f"{moved / 'train.jsonl'} (content changed)" in error.problems[0].message
    assert "val.jsonl" not in error.problems[0].message


def test_resume_allows_what_does_not_change_the_result(tiny_model, data, run, tmp_path):
    # the same data in another folder, other tracking, retention and save interval
    moved = tmp_path / "moved-data"
    shutil.copytree(data, moved)
    summary = train(config(tiny_model, moved, run, resume=True, tracking=["tensorboard"], save_total_limit=3,
                           save_steps=3), progress=False)
    assert summary["steps"] == 4
    saved = json.loads((run / "checkpoints" / "step-0000002" / "fingerprint.json").read_text())
    assert saved["config"]["learning_rate"] == "auto" and "out" not in saved["config"]
    assert set(saved["data"]) == {"train.jsonl", "val.jsonl"}


def test_a_checkpoint_without_a_fingerprint_is_not_resumed_blindly(tiny_model, data, run):
    (run / "checkpoints" / "step-0000002" / "fingerprint.json").unlink()
    error = error_of(lambda: train(config(tiny_model, data, run, resume=True), progress=False))
    assert error.problems[0].code == "resume_mismatch" and "has no fingerprint.json" in error.problems[0].message


# ---------------------------------------------------------------- safe loading


class RunsCode:
    """Unpickling this calls open(marker, 'w'): stands for any code a crafted file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_a_pickled_object_is_refused_not_run(tiny_model, data, run, tmp_path):
    marker = tmp_path / "code-ran"
    state = run / "checkpoints" / "step-0000002" / "state.pt"
    payload = torch.load(state, weights_only=False)  # our own file: trusted here
    payload["state"] = RunsCode(marker)
    torch.save(payload, state)
    error = error_of(lambda: train(config(tiny_model, data, run, resume=True), progress=False))
    assert error.problems[0].code == "unsafe_checkpoint" and error.problems[0].where == str(state)
    assert "(io.open)" in error.problems[0].message
    assert not marker.exists()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_garbled_checkpoint_is_a_clear_error(tiny_model, data, run):
    state = run / "checkpoints" / "step-0000002" / "state.pt"
    state.write_bytes(b"not a checkpoint")
    error = error_of(lambda: train(config(tiny_model, data, run, resume=True), progress=False))
    assert error.problems[0].code == "corrupt_checkpoint"


# ---------------------------------------------------------------- torn metrics line


def test_resume_after_a_torn_metrics_line(tiny_model, data, run, caplog):
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows[:2]) + "\n" + TORN)  # killed while writing step 3
    with caplog.at_level(logging.WARNING):
        train(config(tiny_model, data, run, resume=True), progress=False)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert f"{metrics}:3: unreadable metrics line skipped" in caplog.text


def test_loss_plot_ignores_a_torn_last_line(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.1, "eval_loss": 2.3}\n' + TORN)
    with caplog.at_level(logging.WARNING):
        plot_losses(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert "metrics.jsonl:3: unreadable metrics line skipped" in caplog.text


# ---------------------------------------------------------------- full disk


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        cli.main(args)
    return caught.value.code


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_reported_as_such_not_as_a_bug(code, quiet_env, monkeypatch, capsys):
    def full(*args, **kw):
        raise OSError(code, os.strerror(code), "/runs/x/adapter/model.safetensors")

    monkeypatch.setattr("tuneforge.models.generate.complete", full)
    assert run_cli(["generate", "hello"]) == 2
    assert capsys.readouterr().err.strip() == ("disk_full: no space left on device (writing "
                                               "/runs/x/adapter/model.safetensors); free space and run again")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_mid_training_names_the_file_and_the_checkpoint(tiny_model, data, tmp_path, quiet_env,
                                                                    monkeypatch, capsys):
    out = tmp_path / "run"
    log = Tracker.log

    def log_to_full_disk(self, step, values):
        if step == 3:  # after the step-2 checkpoint, metrics.jsonl lands on a full disk
            self.path.unlink()
            self.path.symlink_to("/dev/full")
        log(self, step, values)

    monkeypatch.setattr(Tracker, "log", log_to_full_disk)
    code = run_cli(["train", "--data", str(data), "--model", tiny_model, "--out", str(out), "--max-steps", "4",
                    "--epochs", "1", "--set", "batch_size=4", "--set", "save_steps=2", "--set", "eval_steps=2",
                    "--set", "tracking=[]"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-2:] == [f"disk_full: no space left on device (writing {out / 'metrics.jsonl'}); "
                          "free space and run again",
                          f"{out}: training_stopped: no space left on device; resume from "
                          f"{out / 'checkpoints' / 'step-0000002'} with --resume"]
    assert "Traceback" not in err and "internal_error" not in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_saving_a_checkpoint_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    made = []

    def mkdtemp(prefix, dir):
        path = Path(dir) / f"{prefix}x"
        path.mkdir()
        (path / "state.pt").symlink_to("/dev/full")
        made.append(path)
        return str(path)

    monkeypatch.setattr(checkpoint.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(TuneforgeError) as caught:
        Checkpoints(folder, keep=2).save(2, {"weights": {"w": torch.zeros(100_000)}})
    assert caught.value.problems[0] == disk_full(made[0] / "state.pt")
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------- --out


def test_out_that_is_a_file_or_under_a_file_is_refused_first(tiny_model, data, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("not a folder")
    for out in (file, file / "run"):
        error = error_of(lambda: train(config(tiny_model, data, out), progress=False))
        assert error.problems[0].code == "out_not_a_folder" and error.problems[0].where == str(out)
        assert "choose another --out" in error.problems[0].message
    # checked before the data is read (or any model loads)
    error = error_of(lambda: train(config(tiny_model, tmp_path / "no-data", file), progress=False))
    assert error.problems[0].code == "out_not_a_folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_out_where_nothing_can_be_written_is_refused_first(tiny_model, data):
    out = Path("/proc/tuneforge-run")  # procfs takes no new files, even from root
    error = error_of(lambda: train(config(tiny_model, data, out), progress=False))
    assert error.problems[0].code == "out_not_writable" and error.problems[0].where == str(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in a read-only folder")
def test_out_in_a_read_only_folder_is_refused_first(tiny_model, data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    error = error_of(lambda: train(config(tiny_model, data, locked / "run"), progress=False))
    assert error.problems[0].code == "out_not_writable"
