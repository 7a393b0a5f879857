"""Bad input through the real CLI entry point ends in its own stable error code and exit 2,
never in the internal-bug path.

The CLI hides tracebacks, so "no Traceback in stderr" alone proves nothing: every command
here runs with TUNEFORGE_DEBUG=1, where an internal error is re-raised (in process: the
exception escapes `main`; in a subprocess: Python prints its traceback and exits 1), and
the output must not say `internal_error`. The control test shows those checks see a bug.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Runs `tuneforge ARGS` in process; returns (exit code, stderr)."""
    monkeypatch.setenv("TUNEFORGE_DEBUG", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # its process-wide settings (environment, warning filters) must not leak into other tests
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            cli.main([str(a) for a in args])
        return done.value.code, capsys.readouterr().err

    return run


def assert_user_error(code: int, stderr: str, *expected: str) -> None:
    assert code == 2, stderr
    for what in expected:
        assert what in stderr, stderr
    assert "internal_error" not in stderr and "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def chat_data(tiny_model, tmp_path_factory) -> Path:
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare

    folder = tmp_path_factory.mktemp("cli-errors")
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: thing number {i % 4} is broken ({i * 7})"},
                          {"role": "assistant", "content": ["billing", "technical", "account", "other"][i % 4]}]}
            for i in range(40)]
    src = folder / "tickets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(PrepareConfig(inputs=[src], out=folder / "data", model=tiny_model, memorisation_check=False))
    return folder / "data"


def test_prepare_missing_file_and_bad_values(run_cli, tiny_model, tmp_path):
    assert_user_error(*run_cli("prepare", tmp_path / "nope.jsonl", "--out", tmp_path / "p", "--model", tiny_model),
                      "file_not_found")
    assert_user_error(*run_cli("prepare", ROOT / "examples" / "support_tickets.jsonl", "--out", tmp_path / "p",
                               "--model", tiny_model, "--split", "0.9,0.9,0.1", "--set", "sede=1"),
                      "unknown_key", "invalid_value")


def test_prepare_defects_are_reported_one_line_each(run_cli, tiny_model, tmp_path):
    code, stderr = run_cli("prepare", ROOT / "tests" / "fixtures" / "defects.jsonl", "--out", tmp_path / "p",
                           "--model", tiny_model, "--no-memorisation-check")
    assert_user_error(code, stderr, "hint:", "--on-error drop")
    assert len([line for line in stderr.splitlines() if line.startswith(f"{ROOT / 'tests' / 'fixtures'}")]) == 15


def test_train_bad_inputs(run_cli, tiny_model, chat_data, tmp_path):
    common = ["--model", tiny_model, "--max-steps", "1", "--set", "tracking=[]"]
    assert_user_error(*run_cli("train", "--data", tmp_path, "--out", tmp_path / "a", *common), "not_prepared")
    assert_user_error(*run_cli("train", "--data", chat_data, "--out", tmp_path / "b", "--objective", "dpo",
                               *common), "wrong_data_for_objective")
    assert_user_error(*run_cli("train", "--data", chat_data, "--out", tmp_path / "c", "--resume", *common),
                      "no_checkpoint")
    assert_user_error(*run_cli("train", "--data", chat_data, "--out", tmp_path / "d", "--set", "lora.rr=8",
                               "--method", "prefix", "--set", "packing=true", *common), "unknown_key")
    assert_user_error(*run_cli("train", "--data", chat_data, "--out", tmp_path / "e", "--bogus-flag", *common),
                      "--bogus-flag")
    # PEFT refuses it once the model is loaded (a ValueError, so an internal_error, until the config check)
    code, stderr = run_cli("train", "--data", chat_data, "--out", tmp_path / "f", "--method", "prefix",
                           "--set", "gradient_checkpointing=true", *common)
    assert_user_error(code, stderr, "invalid_value", "gradient_checkpointing does not work with method prefix")


def test_model_and_artifact_errors(run_cli, tmp_path):
    assert_user_error(*run_cli("generate", "--model", "someorg/somemodel", "hi"), "model_not_found", "smollm2-135m")
    assert_user_error(*run_cli("generate", "--adapter", tmp_path, "hi"), "not_a_model")
    assert_user_error(*run_cli("merge", tmp_path, "--out", tmp_path / "merged"), "not_a_model")


def test_eval_bad_fail_if_is_a_user_error(run_cli, tiny_model, chat_data, tmp_path):
    code, stderr = run_cli("eval", "--data", chat_data, "--model", tiny_model, "--baselines", "zero-shot",
                           "--limit", "2", "--out", tmp_path / "ev", "--fail-if", "base-zero-shot.acuracy < 1")
    assert_user_error(code, stderr, "invalid_fail_if")
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_the_real_entry_point_in_a_subprocess(tiny_model, tmp_path):
    env = dict(os.environ) | {"TUNEFORGE_DEBUG": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", "--data", str(tmp_path), "--model",
                           tiny_model, "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert_user_error(proc.returncode, proc.stderr, "not_prepared")


def test_control_an_internal_error_is_seen(run_cli, monkeypatch, capsys, tmp_path):
    """The checks above have teeth: a bug (here: reading the data raises KeyError) escapes
    `main` under TUNEFORGE_DEBUG=1, and without it exits 1 as internal_error."""
    from tuneforge.train import data

    def broken(folder):
        raise KeyError("status")

    monkeypatch.setattr(data, "read_prepared", broken)
    with pytest.raises(KeyError):
        cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    monkeypatch.delenv("TUNEFORGE_DEBUG")
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert done.value.code == 1 and "internal_error" in stderr
    assert "Traceback" not in stderr  # which is why "no Traceback" alone proved nothing


# ---------------------------------------------------------------- warnings


@pytest.fixture
def shown(monkeypatch):
    """The CLI's warning filters over "show every warning"; yields the warnings that get through."""
    import warnings

    for key in ("TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)  # _quiet_libraries sets them; put them back after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_libraries()
        yield caught


def warn_from(module: str, message: str, category: type[Warning]) -> None:
    """A warning as if raised by `module` (filters match the module a warning is attributed to)."""
    import warnings

    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


def test_only_the_listed_library_warnings_are_hidden(shown):
    listed = [
        ("transformers.modeling_utils", "`is_gradient_checkpointing` is deprecated and will be removed in v6. "
         "Use `is_activation_checkpointing` instead.", FutureWarning),
        ("transformers.modeling_utils", "`gradient_checkpointing_enable` is deprecated and will be removed in v6.",
         FutureWarning),
        ("torch.nn.modules.module", "`past_key_values` is deprecated and will be removed in version 5.40.0 for "
         "`LlamaForCausalLM.forward`. Use `cache` instead.", FutureWarning),
        ("peft.peft_model", "Position ids are not supported for parameter efficient tuning. Ignoring position ids.",
         UserWarning),
    ]
    for module, message, category in listed:
        warn_from(module, message, category)
    assert [str(w.message) for w in shown] == []
    others = [
        ("transformers.tokenization_utils_base", "the tokenizer has no pad token", UserWarning),
        ("transformers.modeling_utils", "`something_else` is deprecated and will be removed in v6.", FutureWarning),
        ("peft.tuners.lora.model", "Already found a `peft_config` attribute in the model.", UserWarning),
        ("tuneforge.train.run", "Position ids are not supported for parameter efficient tuning.", UserWarning),
        ("accelerate.utils", "`past_key_values` is deprecated", FutureWarning),
    ]
    for module, message, category in others:
        warn_from(module, message, category)
    assert [str(w.message) for w in shown] == [message for _, message, _ in others]


def test_a_warning_inside_a_command_is_printed(tmp_path):
    """Through the real entry point: a warning no one listed reaches stderr; a listed one does not."""
    code = """if True:
        import warnings
        from tuneforge import cli
        from tuneforge.train import run

        def fake_train(cfg):
            warnings.warn("the chat template renders no end-of-turn token", UserWarning)
            warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                                   FutureWarning, "transformers/modeling_utils.py", 1,
                                   module="transformers.modeling_utils")
            return {}

        run.train = fake_train
        cli.main(["train", "--data", "unused", "--out", "unused"])
    """
    env = dict(os.environ) | {"HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning: the chat template renders no end-of-turn token" in proc.stderr
    assert "is_gradient_checkpointing" not in proc.stderr


@pytest.mark.parametrize("method, extra", [("prefix", []), ("prompt", ["--set", "gradient_checkpointing=true"])])
def test_training_through_the_cli_shows_no_known_library_noise(method, extra, tiny_model, chat_data, tmp_path,
                                                                shown, monkeypatch):
    """The list is current: the warnings these commands fire with this torch/transformers/peft are
    all covered (prefix tuning, gradient checkpointing and prompt tuning fire all of them)."""
    monkeypatch.setenv("TUNEFORGE_DEBUG", "1")
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--data", str(chat_data), "--model", tiny_model, "--out", str(tmp_path / method),
                  "--method", method, "--max-steps", "2", "--set", "tracking=[]", "--set", "eval_steps=1",
                  "--set", "batch_size=2", *extra])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:  # generation with the virtual tokens
        cli.main(["generate", "--adapter", str(tmp_path / method), "--chat", "hello", "--max-new-tokens", "2"])
    assert done.value.code == 0
    noise = [f"{w.category.__name__}: {w.message} ({w.filename})" for w in shown
             if issubclass(w.category, (UserWarning, FutureWarning))]
    assert noise == []
