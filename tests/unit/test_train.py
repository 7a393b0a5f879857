"""The train stage end to end on the tiny model: every method trains and loads back,
resume is exact, the objectives and data mixing work, bad runs fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
import torch
from safetensors.torch import load_file

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.models.load import load_model
from tuneforge.models.tuned import load_tuned
from tuneforge.train.config import TrainConfig
from tuneforge.train.methods import keep_4bit_layout
from tuneforge.train.run import train

LABELS = ["billing", "technical", "account", "other"]
TOPICS = {"billing": "charged twice for my invoice", "technical": "the app crashes on login",
          "account": "reset my password please", "other": "thank you for your help"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepared(tiny_model: str, folder: Path, rows: list) -> Path:
    src = write_jsonl(folder.parent / f"{folder.name}.jsonl", rows)
    prepare(PrepareConfig(inputs=[src], out=folder, model=tiny_model, memorisation_check=False, max_seq_len=256))
    return folder


@pytest.fixture(scope="module")
def chat_data(tiny_model, tmp_path_factory) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: {TOPICS[label]} (ref {i * 7})"},
                          {"role": "assistant", "content": label}]}
            for i, label in enumerate(LABELS * 12)]
    return prepared(tiny_model, tmp_path_factory.mktemp("data") / "chat", rows)


def config(tiny_model, data, out, **kw) -> TrainConfig:
    base = dict(model=tiny_model, data=data, out=out, max_steps=4, epochs=1, batch_size=4, eval_steps=2,
                save_steps=2, tracking=[])
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def wide_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model at width 64, same tokenizer: bitsandbytes' CPU 4-bit kernels need layers
    whose sizes are multiples of 64 (in) and 32 (out), which the 32-wide model's are not."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tiny = LlamaForCausalLM.from_pretrained(tiny_model)
    cfg = tiny.config
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = 64, 128, 16
    torch.manual_seed(0)
    wide = LlamaForCausalLM(cfg)
    wide.generation_config = tiny.generation_config
    folder = tmp_path_factory.mktemp("wide-model")
    wide.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def exported(monkeypatch) -> dict:
    """Catches the in-memory model `train` exports (best weights loaded), to compare with what
    was written."""
    from tuneforge.train import run as run_module

    seen = {}
    real = run_module._export

    def export(model, *args, **kwargs):
        seen["model"] = model
        return real(model, *args, **kwargs)

    monkeypatch.setattr(run_module, "_export", export)
    return seen


@torch.no_grad()
def logits_of(model, ids: dict) -> torch.Tensor:
    """Float32 logits at the input's positions (prompt tuning puts virtual tokens in front)."""
    model.eval()
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in ids.items()}, use_cache=False).logits
    return logits[:, -ids["input_ids"].shape[1]:].float().cpu()


def reload_on_4bit_base(run: Path, base: str, device: torch.device):
    """The QLoRA adapter on the same 4-bit base it trained with (load_tuned uses a float32 base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, device_map={"": device})
    keep_4bit_layout(model)  # the kernels training used (see there)
    return PeftModel.from_pretrained(model, str(run / "adapter"))


METHODS = ["lora", "qlora", "dora", "ia3", "prefix", "prompt", "full"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_loads_back(method, tiny_model, wide_model, chat_data, tmp_path, exported):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    base = wide_model if method == "qlora" else tiny_model
    # float32 throughout (no int8 base on AVX2-only CPUs), so the reloaded adapter must give
    # exactly the logits of the model that trained
    int8 = {"int8_base": False} if method == "lora" else {}
    summary = train(config(base, chat_data, tmp_path / method, method=method, bf16=False, **int8), progress=False)
    assert summary["method"] == method and summary["steps"] == 4
    assert summary["train_tokens"] > 0 and summary["final_eval_loss"] is not None
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png"):
        assert (tmp_path / method / name).exists()
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_loss" in rows[1]

    trained = exported["model"]
    model, tokenizer = load_tuned(tmp_path / method)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "ticket: app crashes"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    want = logits_of(trained, ids)
    if method == "qlora":
        device = next(trained.parameters()).device
        reloaded = reload_on_4bit_base(tmp_path / method, base, device)
        with reloaded.disable_adapter():
            base_logits = logits_of(reloaded, ids)
    else:
        reloaded = model
        base_logits = logits_of(load_model(base), ids)
    got = logits_of(reloaded, ids)
    # training changed the model (so the comparison below would catch an adapter that did not save) ...
    assert float((want - base_logits).abs().max()) > 1e-3
    # ... and the artifact on disk is that trained model
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_qlora_base_stays_fixed_through_evals_and_saves(wide_model):
    """bitsandbytes repacks 4-bit weights lossily on AVX512-BF16 CPUs at the first eval-mode pass;
    the frozen base a QLoRA run trains must be the same before and after the loop evaluates and
    exports, or resume is not exact and the adapter does not fit the base it is loaded onto."""
    pytest.importorskip("bitsandbytes")
    from tuneforge.train.methods import build_model

    cfg = TrainConfig(model=wide_model, data=Path("unused"), method="qlora", tracking=[])
    model = build_model(cfg, wide_model, "cpu", bf16=False)
    ids = torch.tensor([[1, 5, 7, 9, 11, 200, 31]])

    @torch.no_grad()
    def train_mode_logits():
        model.train()
        return model(input_ids=ids).logits

    before = train_mode_logits()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # loop.evaluate
    model.state_dict()  # the export
    assert torch.equal(train_mode_logits(), before)


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("settings", [{"lora": {"dropout": 0.1}}, {"int8_base": True}], ids=["dropout", "int8_base"])
def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tiny_model, chat_data, tmp_path, settings):
    """Dropout: the random state is restored. int8_base: the resumed run rounds and smooths
    the base exactly as the first did (on the first train examples, before any step)."""
    kw = dict(max_steps=6, eval_steps=100, save_steps=2, save_total_limit=5, **settings)
    first = train(config(tiny_model, chat_data, tmp_path / "whole", **kw), progress=False)
    assert first["settings"]["int8_base"] is settings.get("int8_base", False)
    train(config(tiny_model, chat_data, tmp_path / "cut", **kw), progress=False)
    # as if killed just after step 2: later checkpoints and the export never happened
    cut = tmp_path / "cut"
    for later in ("step-0000004", "best.pt"):
        path = cut / "checkpoints" / later
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.rmtree(cut / "adapter")
    summary = train(config(tiny_model, chat_data, cut, resume=True, **kw), progress=False)
    assert summary["steps"] == 6
    whole, resumed = adapter_weights(tmp_path / "whole"), adapter_weights(cut)
    assert whole.keys() == resumed.keys()
    diff = max(float((whole[k] - resumed[k]).abs().max()) for k in whole)
    assert diff < 1e-5
    assert any(float(v.abs().max()) > 0 for k, v in whole.items() if "lora_B" in k)  # it really trained


def test_a_finished_run_folder_is_not_overwritten_and_resume_needs_a_checkpoint(tiny_model, chat_data, tmp_path):
    train(config(tiny_model, chat_data, tmp_path / "run"), progress=False)
    with pytest.raises(TuneforgeError) as caught:
        train(config(tiny_model, chat_data, tmp_path / "run"), progress=False)
    assert caught.value.problems[0].code == "run_exists"
    with pytest.raises(TuneforgeError) as caught:
        train(config(tiny_model, chat_data, tmp_path / "empty", resume=True), progress=False)
    assert caught.value.problems[0].code == "no_checkpoint"


def test_unprepared_folder_and_wrong_objective_are_clear_errors(tiny_model, chat_data, tmp_path):
    with pytest.raises(TuneforgeError) as caught:
        train(config(tiny_model, tmp_path, tmp_path / "run"), progress=False)
    assert caught.value.problems[0].code == "not_prepared"
    with pytest.raises(TuneforgeError) as caught:
        train(config(tiny_model, chat_data, tmp_path / "run", objective="dpo"), progress=False)
    assert caught.value.problems[0].code == "wrong_data_for_objective"


def test_early_stopping_keeps_the_best_checkpoint(tiny_model, chat_data, tmp_path):
    # a learning rate this high (Adam moves every weight by about this much a step) makes eval loss
    # rise; float32 on every CPU, since bf16 or an int8 base round differently and move where it does
    summary = train(config(tiny_model, chat_data, tmp_path / "run", max_steps=40, eval_steps=1,
                           learning_rate=0.3, early_stopping_patience=2, bf16=False, int8_base=False),
                    progress=False)
    assert summary["stopped_early"] and summary["steps"] < 40
    assert summary["best_eval_loss"] <= summary["final_eval_loss"]


def test_auto_epochs_stop_when_validation_stops_improving(tiny_model, chat_data, tmp_path):
    # epochs auto is an upper bound: three evals in a row without a better loss end the run
    summary = train(config(tiny_model, chat_data, tmp_path / "run", epochs="auto", max_steps=40, eval_steps=1,
                           learning_rate=0.9), progress=False)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["early_stopping_patience"] == 3
    assert summary["stopped_early"] and summary["steps"] < resolved["total_steps"]
    assert summary["best_eval_loss"] <= summary["final_eval_loss"]
    fixed = train(config(tiny_model, chat_data, tmp_path / "fixed", epochs=1, max_steps=6, eval_steps=1,
                         learning_rate=0.5), progress=False)
    assert not fixed["stopped_early"] and fixed["steps"] == 6  # a fixed count is run as asked


def test_dpo_on_preference_pairs(tiny_model, tmp_path):
    rows = [{"prompt": f"Question {i}: how do I get a refund?", "chosen": "Open billing and press refund.",
             "rejected": "No idea, go away."} for i in range(24)]
    data = prepared(tiny_model, tmp_path / "prefs", rows)
    summary = train(config(tiny_model, data, tmp_path / "run", learning_rate=0.01), progress=False)
    assert summary["objective"] == "dpo"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert "eval_reward_accuracy" in evals[-1]
    # at step 0 the policy is the reference, so the DPO loss starts at log(2) and must go down
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert evals[-1]["eval_loss"] < 0.6931


def test_pretrain_on_raw_text(tiny_model, tmp_path):
    text = prepared(tiny_model, tmp_path / "text",
                    [{"text": f"Document {i}. The quick brown fox jumps over the lazy dog {i} times."}
                     for i in range(30)])
    summary = train(config(tiny_model, text, tmp_path / "pre"), progress=False)
    assert summary["objective"] == "pretrain"


def test_mix_draws_each_dataset_in_proportion_to_its_weight():
    from tuneforge.train.data import mix

    sizes, weights = {"a": 100, "b": 50, "c": 10}, {"a": 1.0, "b": 2.0, "c": 1.0}
    parts = [([{"src": name, "i": i} for i in range(n)], weights[name]) for name, n in sizes.items()]
    mixed = mix(parts, seed=0)
    total = sum(sizes.values())
    assert abs(len(mixed) - total) <= len(sizes)  # as many examples as all datasets together
    for name in sizes:
        share = sum(r["src"] == name for r in mixed) / len(mixed)
        assert share == pytest.approx(weights[name] / sum(weights.values()), abs=1.5 / total), name
    # a dataset drawn less often than it has examples is not repeated; one drawn more often is
    a_ids = [r["i"] for r in mixed if r["src"] == "a"]
    assert len(set(a_ids)) == len(a_ids)
    assert set(r["i"] for r in mixed if r["src"] == "c") == set(range(10))
    assert mix(parts, seed=0) == mixed and mix(parts, seed=1) != mixed  # seeded
    assert [r["src"] for r in mixed[:40]].count("a") < 40  # shuffled, not one dataset after the other


def test_multi_task_mix_keeps_the_weights_in_every_epoch(tiny_model, tmp_path, monkeypatch):
    """Through `train`: every epoch sees the datasets in the proportions of their weights."""
    from transformers import AutoTokenizer

    from tuneforge.train import loop

    alpha = prepared(tiny_model, tmp_path / "alpha", [
        {"messages": [{"role": "user", "content": f"alpha ticket {i}: {TOPICS[label]} (ref {i * 7})"},
                      {"role": "assistant", "content": label}]} for i, label in enumerate(LABELS * 10)])
    beta = prepared(tiny_model, tmp_path / "beta", [
        {"messages": [{"role": "user", "content": f"beta case {i}: {TOPICS[label]} (id {i * 13})"},
                      {"role": "assistant", "content": label}]} for i, label in enumerate(LABELS * 5)])
    plans = []
    real_run = loop.run

    def run(plan):
        plans.append(plan)
        return real_run(plan)

    monkeypatch.setattr(loop, "run", run)
    mixed = TrainConfig(model=tiny_model, datasets=[{"path": alpha, "weight": 1}, {"path": beta, "weight": 3}],
                        out=tmp_path / "mix", epochs=2, batch_size=4, eval_steps=1000, save_steps=1000,
                        tracking=[])
    summary = train(mixed, progress=False)
    assert summary["objective"] == "sft" and len(summary["sources"]) == 2
    sizes = {s["path"]: s["train"] for s in summary["sources"]}
    assert sizes[str(alpha)] > sizes[str(beta)]  # unmixed, beta would be the smaller share, not 3 in 4
    [plan] = plans
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    source = ["alpha" if "alpha ticket" in tokenizer.decode(ex.input_ids) else "beta" for ex in plan.train]
    assert all(("beta case" in tokenizer.decode(ex.input_ids)) == (s == "beta") for ex, s in zip(plan.train, source))
    assert summary["steps"] == 2 * plan.steps_per_epoch
    for epoch in range(2):
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        seen = [i for step in steps for batch in loop._my_indices(plan, step, 1, 0) for i in batch]
        assert sorted(seen) == list(range(len(plan.train)))  # each mixed example once per epoch
        share = sum(source[i] == "beta" for i in seen) / len(seen)
        assert share == pytest.approx(0.75, abs=0.03), epoch
