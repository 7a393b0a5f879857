"""GPU paths (CUDA bf16, QLoRA on the GPU, the vLLM serve backend); skipped cleanly where there
is no CUDA device, as in CI, and the vLLM test also where vllm is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
LABELS = ["billing", "technical", "account", "other"]


def tickets(path: Path, n: int) -> Path:
    """n support tickets labelled by their problem number, as chat JSONL."""
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: problem {i % 4}"},
                          {"role": "assistant", "content": LABELS[i % 4]}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_briefly(tmp_path: Path, method: str) -> dict:
    """Three steps of `method` on the built-in model; the run folder is tmp_path / "run"."""
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.prepare import prepare
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    prepare(PrepareConfig(inputs=[tickets(tmp_path / "t.jsonl", 40)], out=tmp_path / "data", memorisation_check=False))
    return train(TrainConfig(data=tmp_path / "data", out=tmp_path / "run", method=method, max_steps=3, epochs=1,
                             tracking=[]), progress=False)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_training_runs_on_cuda(method, tmp_path):
    summary = train_briefly(tmp_path, method)
    assert summary["steps"] == 3 and summary["settings"]["bf16"] == torch.cuda.is_bf16_supported()


def test_eval_runs_on_cuda(tiny_model, tmp_path):
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import Variant, evaluate
    from tuneforge.models import load_model, load_tokenizer

    src = tickets(tmp_path / "t.jsonl", 16)
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


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_serve_with_the_vllm_backend_answers_from_the_base_and_an_adapter(tmp_path):
    """`tuneforge serve --backend vllm` on the built-in model with one LoRA adapter, called with the
    openai client: the one test of VllmEngine against the real vLLM (its unit tests use a fake)."""
    import openai

    from test_serve_cli import MODEL, ensure_stopped, free_port, wait_healthy

    train_briefly(tmp_path, "lora")  # on the built-in model, MODEL

    port = free_port()
    log = tmp_path / "serve.log"  # a file, not a pipe: vLLM logs more than a pipe holds unread
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "serve", "--backend", "vllm", "--model", MODEL, "--adapter",
             f"tickets={tmp_path / 'run'}", "--port", str(port), "--log-db", str(tmp_path / "log.db")],
            stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TUNEFORGE_DEBUG": "1"})
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    try:
        try:
            wait_healthy(client, process, timeout=900)  # vLLM compiles and captures CUDA graphs at start
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-8000:]}") from None
        assert [m.id for m in client.models.list().data] == [MODEL, "tickets"]
        messages = [{"role": "user", "content": "ticket 7: problem 3"}]
        for model in (MODEL, "tickets"):
            answer = client.chat.completions.create(model=model, temperature=0, max_tokens=16, messages=messages)
            assert answer.model == model and answer.choices[0].finish_reason in ("stop", "length")
            assert answer.choices[0].message.content.strip() and 0 < answer.usage.completion_tokens <= 16
        streamed = client.chat.completions.create(model="tickets", temperature=0, max_tokens=16, messages=messages,
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        ensure_stopped(process)
