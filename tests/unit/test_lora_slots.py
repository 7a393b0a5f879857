"""inference.lora: per-row LoRA terms from stacked matrices equal PEFT's, adapter by adapter."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from tuneforge.inference.lora import LoraSlots, read_lora


def peft_adapter(model, config: LoraConfig, seed: int):
    """A PEFT model with random (non-zero) B matrices, and the state dict PEFT would save."""
    torch.manual_seed(seed)
    peft = get_peft_model(copy.deepcopy(model), config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft.eval()
    return peft, {k: v.clone() for k, v in get_peft_model_state_dict(peft).items()}


@pytest.fixture(scope="module")
def setup(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    configs = [
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear"),
        LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj", "down_proj"], alpha_pattern={"down_proj": 12}),
    ]
    adapters = [peft_adapter(model, c, seed) for seed, c in enumerate(configs)]
    return model, configs, adapters


def loaded(model, configs, adapters) -> tuple:
    """A copy of the model with every adapter of `adapters` loaded as a0, a1, ..."""
    served = copy.deepcopy(model)
    slots = LoraSlots(served)
    for i, (config, (_, state)) in enumerate(zip(configs, adapters)):
        slots.add(f"a{i}", *read_lora(state, config.to_dict()))
    return served, slots


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_each_row_gets_what_peft_gives_for_its_adapter(setup):
    model, configs, adapters = setup
    served, slots = loaded(model, configs, adapters)
    ids = torch.randint(0, model.config.vocab_size, (5, 7), generator=torch.Generator().manual_seed(0))
    rows = ["a0", None, "a2", "a1", "a0"]
    slots.route(rows)
    mixed = logits(served, ids)
    for i, key in enumerate(rows):
        expected = logits(model if key is None else adapters[int(key[1])][0], ids[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], expected, atol=1e-5, rtol=1e-4)
    # a batch on one adapter takes its slice; a batch on the base skips the LoRA terms
    slots.route(["a1", "a1"])
    torch.testing.assert_close(logits(served, ids[:2]), logits(adapters[1][0], ids[:2]), atol=1e-5, rtol=1e-4)
    slots.route([None, None])
    torch.testing.assert_close(logits(served, ids[:2]), logits(model, ids[:2]), atol=0, rtol=0)


def test_removing_an_adapter_leaves_the_others_as_they_were(setup):
    model, configs, adapters = setup
    served, slots = loaded(model, configs, adapters)
    slots.remove("a1")
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    slots.route(["a2", "a0"])
    mixed = logits(served, ids)
    torch.testing.assert_close(mixed[:1], logits(adapters[2][0], ids[:1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[1:], logits(adapters[0][0], ids[1:]), atol=1e-5, rtol=1e-4)
    for key in ("a0", "a2"):
        slots.remove(key)
    slots.route([None])
    torch.testing.assert_close(logits(served, ids[:1]), logits(model, ids[:1]), atol=0, rtol=0)


def test_what_is_not_plain_lora_on_linear_layers_is_refused(setup):
    model, configs, adapters = setup
    slots = LoraSlots(copy.deepcopy(model))
    state = dict(adapters[0][1])
    with pytest.raises(ValueError, match="only plain LoRA"):
        read_lora({**state, "base_model.model.lm_head.modules_to_save.weight": torch.zeros(1)}, configs[0].to_dict())
    key = next(k for k in state if "lora_A" in k)
    with pytest.raises(ValueError, match="one of its two"):
        read_lora({key: state[key]}, configs[0].to_dict())
    weights, scales = read_lora(state, configs[0].to_dict())
    name = next(iter(weights))
    with pytest.raises(ValueError, match="not a Linear"):
        slots.add("x", {**weights, "model.embed_tokens": weights[name]}, {**scales, "model.embed_tokens": 1.0})
    assert not slots.layers and not slots.order  # nothing was wrapped


def test_under_bf16_autocast_rows_still_get_their_adapter(setup):
    model, configs, adapters = setup
    served, slots = loaded(model, configs, adapters)
    ids = torch.randint(0, model.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(2))

    def bf16(m, rows):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return logits(m, rows).float()

    for rows in (["a1", "a1", "a1"], ["a0", None, "a2"]):  # one adapter's slice, then the mixed path
        slots.route(rows)
        mixed = bf16(served, ids)
        for i, key in enumerate(rows):
            expected = bf16(model if key is None else adapters[int(key[1])][0], ids[i:i + 1])
            torch.testing.assert_close(mixed[i:i + 1], expected, atol=0.05, rtol=0.05)
    slots.remove("a1")  # the cast copies go with the stacked matrices
    slots.route(["a0", "a2", None])
    torch.testing.assert_close(bf16(served, ids)[:1], bf16(adapters[0][0], ids[:1]), atol=0.05, rtol=0.05)
