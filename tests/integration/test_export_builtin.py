"""`tuneforge export --format gguf` on the built-in model: a LoRA adapter with random (non-zero)
weights, so the merge matters, exported to f16 GGUF and run in llama.cpp; the tokenizer, the
next-token distributions and the greedy answers match the adapter, and a reference that differs
(another model's answers) fails the same check. Skipped where llama-cpp-python is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: pip install llama-cpp-python (it builds llama.cpp from source, "
           "about 7 minutes on one core); the GGUF parity check needs it")]

TICKETS = Path("examples/support_tickets.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_model, load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    data.mkdir()
    (data / "val.jsonl").write_text("\n".join(TICKETS.read_text().splitlines()[:6]) + "\n")
    torch.manual_seed(0)
    model = get_peft_model(load_model("smollm2-135m"), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        init_lora_weights=False))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)  # large enough that the adapter answers unlike its base
    adapter = root / "run" / "adapter"
    model.save_pretrained(adapter)
    load_tokenizer("smollm2-135m").save_pretrained(adapter)
    (adapter / "tuneforge.json").write_text(json.dumps({"base_model": str(resolve_model("smollm2-135m")),
                                                        "method": "lora"}))
    (root / "run" / "summary.json").write_text(json.dumps({"sources": [{"path": str(data)}]}))
    return root / "run"


def test_f16_gguf_answers_like_the_adapter(run, tmp_path):
    from tuneforge.cli import main

    out = tmp_path / "tickets.gguf"
    with pytest.raises(SystemExit) as done:
        main(["export", str(run), "--out", str(out), "--samples", "6"])
    assert done.value.code in (0, None)
    report = json.loads(out.with_suffix(".export.json").read_text())
    check = report["parity"]
    assert check["checked"] and check["ok"] and check["prompts"] == 6
    assert check["tokenizer_match"] == 1.0 and check["max_kl"] < 0.01 and check["greedy_match"] >= 0.75
    assert report["stop_token"] == "<|im_end|>"
    modelfile = out.with_suffix(".Modelfile").read_text()
    assert modelfile.startswith("FROM ./tickets.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile

    # the same check fails when the reference is not this model's: the base model's answers
    from tuneforge.export.gguf import parity, reference_answers, validation_prompts
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.template import render, stop_ids

    tokenizer = load_tokenizer("smollm2-135m")
    texts = [render(tokenizer, m, generation_prompt=True) for m in validation_prompts(run, 3)]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stops = stop_ids(tokenizer)
    firsts, answers = reference_answers(load_model("smollm2-135m"), tokenizer, prompts, 8, stops)
    other = parity(out, prompts, firsts, answers, stops, texts, "f16", 8)
    assert not other["ok"] and other["max_kl"] > 0.01


def test_q4_k_m_is_quantized_by_llama_cpp_and_checked_with_its_own_tolerance(run, tmp_path):
    from tuneforge.cli import main

    out = tmp_path / "small.gguf"
    with pytest.raises(SystemExit) as done:
        main(["export", str(run), "--out", str(out), "--quant", "q4_k_m", "--samples", "6"])
    assert done.value.code in (0, None)
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert report["quant"] == "q4_k_m" and report["bytes"] == out.stat().st_size < 150e6  # f16 is 271 MB
    check = report["parity"]
    assert check["checked"] and check["ok"] and check["tokenizer_match"] == 1.0
    assert check["tolerance"]["max_kl"] == 0.5 and not out.with_name(f".{out.name}.tmp").exists()
