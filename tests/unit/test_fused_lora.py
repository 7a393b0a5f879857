"""The fused LoRA autograd function (train/fused_lora.py) computes what PEFT computes.

It runs in every default LoRA run, so its forward output, the gradient it sends back to
the input and the gradients of lora_A/lora_B are compared with plain PEFT on the same
weights (lora_B non-zero, so the adapter matters): on a small module, in float32 (tight)
and under bfloat16 autocast (loose), then on the tiny model end to end through the loss
the training loop uses. Every comparison also counts calls of the fused function, so a
test cannot pass by PEFT's own forward running on both sides.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from tuneforge.train import fused_lora
from tuneforge.train.collate import Encoder, packed_batch, padded_batch

FP32 = dict(rtol=1e-5, atol=1e-5)  # float32, after a different but exact order of operations
BF16_REL = 3e-2  # relative (Frobenius) error allowed under bfloat16 autocast


@pytest.fixture
def fused_calls(monkeypatch) -> dict[str, int]:
    """Counts forward and backward calls of the fused autograd function."""
    calls = {"forward": 0, "backward": 0}
    original = fused_lora._LoraLinear

    class Counting(original):
        @staticmethod
        def forward(ctx, *args):
            calls["forward"] += 1
            return original.forward(ctx, *args)

        @staticmethod
        def backward(ctx, *grads):
            calls["backward"] += 1
            return original.backward(ctx, *grads)

    monkeypatch.setattr(fused_lora, "_LoraLinear", Counting)
    return calls


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(24, 40)  # with bias
        self.out = nn.Linear(40, 16, bias=False)

    def forward(self, x):
        return self.out(torch.tanh(self.proj(x)))


def peft_net(dropout: float = 0.0, base_dtype: torch.dtype = torch.float32):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=12, target_modules=["proj", "out"],
                                           lora_dropout=dropout))
    for name, param in net.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5)  # PEFT starts B at zero, where the adapter does nothing
        elif "lora_" not in name:
            param.data = param.data.to(base_dtype)  # frozen base in bf16, as build_model does with bf16
    return net


def forward_backward(model, x: torch.Tensor, bf16: bool):
    """(output, grad of the input, grads of every adapter parameter) for a fixed scalar loss."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = model(x)
    # weights that differ per element, so a transposed or mis-scaled gradient shows
    (y.float() * torch.linspace(-1, 2, y.numel()).reshape(y.shape)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    return y.detach(), x.grad, grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def assert_same(fused, peft, bf16: bool) -> None:
    (y, gx, grads), (y_ref, gx_ref, grads_ref) = fused, peft
    assert y.dtype == y_ref.dtype and gx.dtype == gx_ref.dtype
    assert grads.keys() == grads_ref.keys()
    assert any("lora_A" in n for n in grads) and any("lora_B" in n for n in grads)
    pairs = [("output", y, y_ref), ("input grad", gx, gx_ref)] + [(n, grads[n], grads_ref[n]) for n in grads]
    for what, got, want in pairs:
        assert got.dtype == want.dtype, what
        if bf16:
            assert rel_err(got, want) < BF16_REL, what
        else:
            torch.testing.assert_close(got, want, **FP32, msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("bf16, base_dtype", [(False, torch.float32), (True, torch.float32),
                                              (True, torch.bfloat16)],
                         ids=["fp32", "bf16-autocast", "bf16-autocast-bf16-base"])
def test_fused_layer_matches_peft_output_and_gradients(bf16, base_dtype, fused_calls):
    reference = peft_net(base_dtype=base_dtype)
    fused = copy.deepcopy(reference)
    assert fused_lora.fuse_lora(fused) == 2
    x = torch.randn(3, 5, 24)
    if base_dtype == torch.bfloat16:
        x = x.to(torch.bfloat16)  # a bf16 base hands bf16 hidden states to the next layer
    want = forward_backward(reference, x, bf16)
    assert fused_calls == {"forward": 0, "backward": 0}
    got = forward_backward(fused, x, bf16)
    assert fused_calls == {"forward": 2, "backward": 2}
    assert_same(got, want, bf16)


def test_fused_layer_without_input_grad_still_gives_adapter_grads(fused_calls):
    """The first adapted layer sees activations that need no grad (frozen embeddings)."""
    reference = peft_net()
    fused = copy.deepcopy(reference)
    fused_lora.fuse_lora(fused)
    x = torch.randn(2, 7, 24)
    for model in (reference, fused):
        model.zero_grad(set_to_none=True)
        (model(x) * torch.linspace(-1, 2, 2 * 7 * 16).reshape(2, 7, 16)).sum().backward()
    assert fused_calls["backward"] == 2
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, **FP32, msg=lambda m, name=name: f"{name}: {m}")


def test_unusual_layers_fall_back_to_peft(fused_calls):
    """Dropout, disabled adapters (the DPO reference pass) and merged adapters use PEFT's forward,
    and still give PEFT's result."""
    x = torch.randn(2, 3, 24)
    with_dropout = peft_net(dropout=0.1)
    fused_lora.fuse_lora(with_dropout)
    with_dropout.eval()
    reference = peft_net(dropout=0.1).eval()
    torch.testing.assert_close(with_dropout(x), reference(x), **FP32)
    assert fused_calls["forward"] == 0

    net = peft_net()
    fused_lora.fuse_lora(net)
    plain = Net()
    plain.load_state_dict({k.replace("base_model.model.", "").replace(".base_layer", ""): v
                           for k, v in net.state_dict().items() if "lora_" not in k})
    with torch.no_grad(), net.disable_adapter():
        torch.testing.assert_close(net(x), plain(x), **FP32)
    assert fused_calls["forward"] == 0
    with torch.no_grad():
        adapted = net(x)
    assert fused_calls["forward"] == 2
    assert (adapted - plain(x)).abs().max() > 1e-2  # the adapter matters here
    net.base_model.merge_adapter()
    with torch.no_grad():
        torch.testing.assert_close(net(x), adapted, rtol=1e-4, atol=1e-5)
    assert fused_calls["forward"] == 2


# ---------------------------------------------------------------- the tiny model, end to end


@pytest.fixture(scope="module")
def examples(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    enc = Encoder(tokenizer, 512)
    chats = [("How do I reset my password?", "account"),
             ("The app crashes when I open the camera view.", "technical"),
             ("I was charged twice for my subscription this month.", "billing refund")]
    examples = [enc.chat([{"role": "user", "content": u}, {"role": "assistant", "content": a}]) for u, a in chats]
    return examples, tokenizer.pad_token_id

INT8_REL = 2e-2  # relative (Frobenius) error allowed with the frozen base in int8


def test_int8_weight_products_are_the_rounded_products():
    """x @ W.T and grad @ W through int8: the same as float32 products of the rounded
    operands (int32 sums are exact), and within int8 rounding of the float32 products."""
    torch.manual_seed(0)
    w, x, g = torch.randn(40, 24), torch.randn(9, 24), torch.randn(9, 40)
    int8 = fused_lora.Int8Weight(w)
    deq = int8.q.float() * int8.scale[:, None]
    xq, sx = fused_lora._int8_rows(x)
    torch.testing.assert_close(int8.forward(x), (xq.float() * sx) @ deq.t(), rtol=1e-5, atol=1e-5)
    gq, sg = fused_lora._int8_rows(g * int8.grad_scale)
    torch.testing.assert_close(int8.input_grad(g), (gq.float() * sg) @ int8.q_t.t().float(), rtol=1e-5, atol=1e-5)
    assert 0 < rel_err(int8.forward(x), x @ w.t()) < INT8_REL
    assert 0 < rel_err(int8.input_grad(g), g @ w) < INT8_REL


def test_smoothing_keeps_int8_products_close_where_an_input_channel_is_far_larger():
    """Like the activations of a real model: one input channel 60x the others. Rounded per
    token, the other channels would lose most of their bits; smoothed by the input range,
    the forward stays within int8 rounding (same maths: the smoothing cancels out), and the
    input gradient, which reads the unsmoothed weight, stays there too."""
    torch.manual_seed(0)
    w, x, g = torch.randn(40, 24), torch.randn(64, 24), torch.randn(64, 40)
    x[:, 3] *= 60
    plain, smoothed = fused_lora.Int8Weight(w), fused_lora.Int8Weight(w, x.abs().amax(0))
    assert rel_err(plain.forward(x), x @ w.t()) > 2 * rel_err(smoothed.forward(x), x @ w.t())
    assert 0 < rel_err(smoothed.forward(x), x @ w.t()) < INT8_REL
    assert 0 < rel_err(smoothed.input_grad(g), g @ w) < INT8_REL


def test_int8_base_layer_stays_close_to_peft_in_float32(fused_calls):
    reference = peft_net()
    fused = copy.deepcopy(reference)
    assert fused_lora.fuse_lora(fused) == 2
    x = torch.randn(3, 5, 24)
    assert fused_lora.quantize_base(fused, lambda: fused(x)) == 2
    fused_calls.update(forward=0)  # the sample pass
    (y_ref, gx_ref, grads_ref), (y, gx, grads) = forward_backward(reference, x, False), forward_backward(fused, x, False)
    assert fused_calls == {"forward": 2, "backward": 2}
    for what, got, want in [("output", y, y_ref), ("input grad", gx, gx_ref)] + [(n, grads[n], grads_ref[n])
                                                                                 for n in grads]:
        assert got.dtype == want.dtype == torch.float32, what
        assert 0 < rel_err(got, want) < INT8_REL, what  # above 0: the int8 path ran


def tiny_lora(tiny_model: str, bf16: bool, packing: bool, fused: bool, monkeypatch):
    """The model `tuneforge train` builds for method lora, with or without the fused path,
    and the same non-zero adapter weights."""
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.methods import build_model

    cfg = TrainConfig(model=tiny_model, data=Path("unused"), method="lora", tracking=[])
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(fused_lora, "fuse_lora", lambda model: 0)
        model = build_model(cfg, tiny_model, "cpu", bf16=bf16, packing=packing)
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    return model


def loss_and_grads(tiny_model, batch, bf16: bool, packing: bool, fused: bool, monkeypatch, int8: bool = False):
    """One training-loop loss (loop.token_logps, summed over trained tokens) and its adapter grads."""
    from tuneforge.train.loop import token_logps

    plan = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), virtual_tokens=0, bf16=bf16)
    model = tiny_lora(tiny_model, bf16, packing, fused, monkeypatch)
    if int8:  # smoothed on the batch itself, as train smooths on its first examples
        assert fused_lora.quantize_base(model, lambda: token_logps(plan, model, batch)) == 14
    model.train()
    logps, _, _ = token_logps(plan, model, batch)
    loss = -logps.sum() / batch.target_tokens
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[n].float().flatten() for n in sorted(grads)])


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_tiny_model_loss_and_adapter_grads_match_peft_fp32(tiny_model, examples, packing, fused_calls, monkeypatch):
    chats, pad_id = examples
    batch = packed_batch(chats) if packing else padded_batch(chats, pad_id)
    loss_ref, grads_ref = loss_and_grads(tiny_model, batch, False, packing, False, monkeypatch)
    assert fused_calls == {"forward": 0, "backward": 0}
    loss, grads = loss_and_grads(tiny_model, batch, False, packing, True, monkeypatch)
    layers = sum(1 for n in grads if "lora_A" in n)
    assert layers == 2 * 7  # all-linear: q, k, v, o, gate, up, down in each of 2 layers
    assert fused_calls == {"forward": layers, "backward": layers}
    assert grads.keys() == grads_ref.keys()
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    for name in grads:
        assert float(grads_ref[name].abs().max()) > 0, name
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_tiny_model_loss_and_adapter_grads_match_peft_bf16(tiny_model, examples, packing, fused_calls, monkeypatch):
    """The default run on a bf16 CPU/GPU: bf16 base, autocast. bf16 rounding alone moves some
    grads of this random model by ~20%, so both bf16 paths are measured against the float32
    result and the fused one may not be much further from it than PEFT's own."""
    chats, pad_id = examples
    batch = packed_batch(chats) if packing else padded_batch(chats, pad_id)
    loss_true, grads_true = loss_and_grads(tiny_model, batch, False, packing, False, monkeypatch)
    loss_ref, grads_ref = loss_and_grads(tiny_model, batch, True, packing, False, monkeypatch)
    assert fused_calls == {"forward": 0, "backward": 0}
    loss, grads = loss_and_grads(tiny_model, batch, True, packing, True, monkeypatch)
    assert fused_calls == {"forward": 14, "backward": 14}
    assert grads.keys() == grads_ref.keys() == grads_true.keys()
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert loss == pytest.approx(loss_true, rel=1e-3)
    peft_err = rel_err(flat(grads_ref), flat(grads_true))
    assert rel_err(flat(grads), flat(grads_true)) < 2 * peft_err + 1e-3
    for name in grads:
        assert rel_err(grads[name], grads_true[name]) < 3 * rel_err(grads_ref[name], grads_true[name]) + 2e-2, name


def test_tiny_model_with_an_int8_base_stays_close_to_float32(tiny_model, examples, fused_calls, monkeypatch):
    chats, _ = examples
    batch = packed_batch(chats)
    loss_ref, grads_ref = loss_and_grads(tiny_model, batch, False, True, True, monkeypatch)
    loss, grads = loss_and_grads(tiny_model, batch, False, True, True, monkeypatch, int8=True)
    assert fused_calls == {"forward": 3 * 14, "backward": 2 * 14}  # float32, the sample pass, int8
    assert loss != loss_ref and loss == pytest.approx(loss_ref, rel=1e-2)
    assert rel_err(flat(grads), flat(grads_ref)) < 5e-2
