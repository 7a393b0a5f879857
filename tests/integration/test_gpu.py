"""GPU paths (CUDA bf16, QLoRA on the GPU); skipped cleanly where there is no CUDA device, as in CI."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_training_runs_on_cuda(method, tmp_path):
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: problem {i % 4}"},
                          {"role": "assistant", "content": ["billing", "technical", "account", "other"][i % 4]}]}
            for i in range(40)]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(PrepareConfig(inputs=[src], out=tmp_path / "data", memorisation_check=False))
    summary = train(TrainConfig(data=tmp_path / "data", out=tmp_path / "run", method=method, max_steps=3, epochs=1,
                                tracking=[]), progress=False)
    assert summary["steps"] == 3 and summary["settings"]["bf16"] == torch.cuda.is_bf16_supported()
