"""Every stage checks its --out before the work: a file, a folder under a file, or a folder
merge would wipe is refused up front with a clear code, and nothing of the user's is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.run import evaluate
from tuneforge.train.config import TrainConfig
from tuneforge.train.merge import merge
from tuneforge.train.run import train


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outdir")
    raw = folder / "raw.jsonl"
    raw.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"ticket {i}"},
                                                    {"role": "assistant", "content": "billing" if i % 2 else "other"}]})
                           + "\n" for i in range(40)))
    prepare(PrepareConfig(inputs=[raw], out=folder / "data", model=tiny_model, memorisation_check=False))
    train(TrainConfig(model=tiny_model, data=folder / "data", out=folder / "run", max_steps=2, epochs=1,
                      batch_size=4, tracking=[]), progress=False)
    return folder


def code_of(call) -> str:
    with pytest.raises(TuneforgeError) as caught:
        call()
    return caught.value.problems[0].code


def test_eval_out_that_is_a_file_is_refused_before_inference(tiny_model, run, tmp_path, monkeypatch):
    monkeypatch.setattr("tuneforge.models.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    file = tmp_path / "report.txt"
    file.write_text("mine")
    for out in (file, file / "eval"):
        assert code_of(lambda: evaluate(EvalConfig(data=run / "data", model=tiny_model, out=out),
                                        progress=False)) == "out_not_a_folder"
    assert file.read_text() == "mine"


def test_merge_out_that_is_a_file_or_a_folder_of_other_files_is_refused(run, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert code_of(lambda: merge(run / "run", file)) == "out_not_a_folder"
    # merging into the run folder itself would have deleted the run
    assert code_of(lambda: merge(run / "run", run / "run")) == "out_not_empty"
    assert (run / "run" / "adapter" / "adapter_config.json").exists()
    assert file.read_text() == "mine"


def test_merge_may_replace_its_own_earlier_output(run, tmp_path):
    first = merge(run / "run", tmp_path / "merged")
    again = merge(run / "run", tmp_path / "merged")
    assert first["ok"] and again["ok"] and (tmp_path / "merged" / "merge.json").exists()
