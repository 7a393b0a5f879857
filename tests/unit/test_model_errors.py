"""Broken models and empty prompts are the user's problems, reported as `WHERE: CODE:
message` with exit 2 before anything heavy runs, not as tuneforge bugs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneforge import cli
from tuneforge.errors import TuneforgeError
from tuneforge.train.config import TrainConfig
from tuneforge.train.run import train

pytestmark = pytest.mark.usefixtures("quiet_env")

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        cli.main(args)
    return caught.value.code, capsys.readouterr().err


def model_copy(tiny_model: str, tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "config.json").write_text(config_text)
    return folder


@pytest.mark.parametrize("prompt", ["", "  \n"])
def test_an_empty_prompt_is_refused_before_the_model_loads(prompt, tiny_model, capsys, monkeypatch):
    monkeypatch.setattr("tuneforge.models.load_model", lambda *a, **k: pytest.fail("the model loaded"))
    code, err = run_cli(["generate", prompt, "--model", tiny_model], capsys)
    assert code == 2
    assert err.startswith("prompt: empty_prompt: the prompt is empty")


def test_a_gguf_file_that_is_not_gguf(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 not found</html>")
    code, err = run_cli(["generate", "hello", "--model", str(fake)], capsys)
    assert code == 2
    assert err.startswith(f"{fake}: invalid_gguf: this is not a GGUF file")
    assert "Traceback" not in err


def test_a_truncated_gguf_file(tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # the magic, then the file ends
    code, err = run_cli(["generate", "hello", "--model", str(cut)], capsys)
    assert code == 2
    assert err.startswith(f"{cut}: invalid_gguf: cannot read this GGUF model")
    assert "download it again" in err


@pytest.mark.parametrize("text, says", [
    ('{"model_type": "llama", "hidden_size": 32,', "not valid JSON"),
    ('{"hidden_size": 32}', "no model_type"),
    ('["llama"]', "no model_type"),
    ('{"model_type": "no-such-architecture"}', "model_type 'no-such-architecture' is not an architecture"),
])
def test_a_model_folder_with_a_broken_config(text, says, tiny_model, tmp_path, capsys):
    folder = model_copy(tiny_model, tmp_path, text)
    code, err = run_cli(["generate", "hello", "--model", str(folder)], capsys)
    assert code == 2
    assert err.startswith(f"{folder / 'config.json'}: invalid_model_config: {says}")


def test_train_checks_the_model_before_reading_data(tiny_model, tmp_path):
    folder = model_copy(tiny_model, tmp_path, "{oops")
    fake = tmp_path / "model.gguf"
    fake.write_text("not gguf")
    for model, code in ((folder, "invalid_model_config"), (fake, "invalid_gguf")):
        # the data folder does not exist: a data error would come first if data were read first
        cfg = TrainConfig(model=str(model), data=tmp_path / "no-data", out=tmp_path / "run", tracking=[])
        with pytest.raises(TuneforgeError) as caught:
            train(cfg, progress=False)
        assert caught.value.problems[0].code == code
    assert not (tmp_path / "run").exists()


def test_a_good_model_folder_still_loads(tiny_model, capsys):
    from tuneforge.models.resolve import check_model, resolve_model

    check_model(tiny_model)
    assert resolve_model(tiny_model) == Path(tiny_model)
    assert json.loads((Path(tiny_model) / "config.json").read_text())["model_type"] == "llama"
