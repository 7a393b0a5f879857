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


def test_eval_runs_on_cuda(tiny_model, tmp_path):
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import Variant, evaluate
    from tuneforge.models import load_model, load_tokenizer

    labels = ["billing", "technical", "account", "other"]
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: problem {i % 4}"},
                          {"role": "assistant", "content": labels[i % 4]}]} for i in range(16)]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for device in ("cpu", "cuda"):
        model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
        cfg = EvalConfig(data=src, baselines=[], device=device, bf16=False, latency_samples=1, out=tmp_path / device)
        results[device] = evaluate(cfg, [Variant("tuned", lambda: (model, tokenizer))], progress=False)
        assert next(model.parameters()).device.type == device
    cpu, cuda = results["cpu"]["variants"]["tuned"], results["cuda"]["variants"]["tuned"]
    assert cuda["perplexity"] == pytest.approx(cpu["perplexity"], rel=1e-3)
    assert cuda["accuracy_constrained"] == cpu["accuracy_constrained"]
    # auto: CUDA, with bf16 autocast where the GPU has it
    model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
    auto = evaluate(EvalConfig(data=src, baselines=[], latency_samples=0, out=tmp_path / "auto"),
                    [Variant("tuned", lambda: (model, tokenizer))], progress=False)
    assert next(model.parameters()).device.type == "cuda" and auto["variants"]["tuned"]["perplexity"] > 1
