"""tuneforge's DPO loss against the paper's formula, computed here from scratch on the tiny model.

    loss = -log sigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)))

where each term is the sum of the log-probabilities of the answer's trained tokens, from a
full forward of each sequence on its own: the policy is a plain (unfused) PEFT LoRA model
with non-zero adapter weights, the reference is the base model loaded separately. The
loop's version (loop.reference_logps, loop._ref_for, loop.dpo_terms) runs on the model
`tuneforge train` builds, in packed and padded batches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneforge.train import fused_lora, loop
from tuneforge.train.collate import IGNORE, Encoder, Example

BETA = 0.5
RECORDS = [
    {"messages": [{"role": "user", "content": "How do I get a refund?"}],
     "chosen": "Open billing and press refund.", "rejected": "No idea, go away."},
    {"messages": [{"role": "user", "content": "The app crashes when I open the camera view."}],
     "chosen": "Please update the app; the camera fix is in the latest version.", "rejected": "Buy a new phone."},
    {"messages": [{"role": "system", "content": "Classify the ticket."},
                  {"role": "user", "content": "I was charged twice for my subscription this month."}],
     "chosen": "billing", "rejected": "technical account"},
]


@pytest.fixture(scope="module")
def pairs(tiny_model) -> tuple[list[tuple[Example, Example]], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    enc = Encoder(tokenizer, 512)
    items = [enc.preference(rec) for rec in RECORDS]
    assert all(item is not None for item in items)
    return items, tokenizer.pad_token_id


def lora_policy(tiny_model: str, packing: bool, fused: bool, monkeypatch):
    """The LoRA model `tuneforge train` builds, or the same without the fused path, with the
    same non-zero adapter weights (so the policy differs from the reference)."""
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.methods import build_model

    cfg = TrainConfig(model=tiny_model, data=Path("unused"), method="lora", tracking=[])
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(fused_lora, "fuse_lora", lambda model: 0)
        model = build_model(cfg, tiny_model, "cpu", bf16=False, packing=packing and fused)
    generator = torch.Generator().manual_seed(6)  # margins of both signs, none near zero
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.3
    return model


def answer_logp(model, example: Example) -> torch.Tensor:
    """Sum of log p(token) over the example's trained tokens, from one full forward."""
    ids = torch.tensor([example.input_ids])
    logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    total = torch.zeros(())
    for t in range(len(example) - 1):
        if example.labels[t + 1] != IGNORE:  # position t predicts token t + 1
            total = total + logp[t, example.labels[t + 1]]
    return total


def paper_dpo(policy, reference, items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, policy log-probs [n, 2], reference log-probs [n, 2])."""
    with torch.no_grad():
        ref = torch.stack([torch.stack([answer_logp(reference, c), answer_logp(reference, r)]) for c, r in items])
    pi = torch.stack([torch.stack([answer_logp(policy, c), answer_logp(policy, r)]) for c, r in items])
    losses = -F.logsigmoid(BETA * ((pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1])))
    return losses, pi, ref


def make_plan(model, items, pad_id: int, packing: bool) -> loop.Plan:
    from accelerate import Accelerator

    return loop.Plan(model=model, optimizer=None, scheduler=None, accelerator=Accelerator(cpu=True),
                     objective="dpo", train=items, val=[], batch_size=len(items), grad_accum=1, total_steps=1,
                     steps_per_epoch=1, seed=0, packing=packing, pad_id=pad_id, bf16=False, max_grad_norm=1.0,
                     eval_steps=1, save_steps=1, patience=None, virtual_tokens=0, beta=BETA, checkpoints=None,
                     best_path=Path("unused"), log=lambda step, row: None)


def adapter_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_dpo_loss_matches_the_paper_formula(tiny_model, pairs, packing, monkeypatch):
    from transformers import AutoModelForCausalLM

    items, pad_id = pairs
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    policy = lora_policy(tiny_model, packing, fused=False, monkeypatch=monkeypatch).eval()
    want, pi, ref = paper_dpo(policy, reference, items)
    want.mean().backward()
    want_grads = adapter_grads(policy)
    # a case where the formula matters: the policy moved away from the reference, both ways
    margins = (pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1])
    assert float(margins.detach().abs().min()) > 0.05
    assert len({bool(m > 0) for m in margins}) == 2

    model = lora_policy(tiny_model, packing, fused=True, monkeypatch=monkeypatch)
    plan = make_plan(model, items, pad_id, packing)
    plan.ref_logps = loop.reference_logps(plan, items)  # adapter disabled = the base model
    torch.testing.assert_close(plan.ref_logps, ref, rtol=0, atol=1e-4)
    model.train()
    # the micro-batch the loop runs at step 0, with its reference rows looked up as the loop does
    [ids] = loop._my_indices(plan, 0, 1, 0)
    assert sorted(ids) == list(range(len(items)))
    batch = loop.make_batch(plan, [items[i] for i in ids])
    losses, right = loop.dpo_terms(plan, model, batch, loop._ref_for(plan, batch, 0, 0, 1, 0))
    torch.testing.assert_close(losses, want[ids].detach(), rtol=1e-5, atol=1e-5)
    assert right.tolist() == [float(margins[i] > 0) for i in ids]
    # the loop's step loss (sum over pairs / batch_size) and its gradient
    (losses.sum() / plan.batch_size).backward()
    grads = adapter_grads(model)
    assert grads.keys() == want_grads.keys() and len(grads) == 2 * 2 * 7
    for name in grads:  # atol as the packing tests': short segments' attention runs batched, in another sum order
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_dpo_eval_loss_and_reward_accuracy_match_the_formula(tiny_model, pairs, monkeypatch):
    """loop.evaluate on preference pairs reports the mean paper loss and the share of pairs
    the policy prefers the chosen answer for."""
    from transformers import AutoModelForCausalLM

    items, pad_id = pairs
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    policy = lora_policy(tiny_model, False, fused=False, monkeypatch=monkeypatch).eval()
    with torch.no_grad():
        want, pi, ref = paper_dpo(policy, reference, items)
    model = lora_policy(tiny_model, True, fused=True, monkeypatch=monkeypatch)
    plan = make_plan(model, [], pad_id, packing=True)
    plan.val, plan.batch_size = items, 2  # two eval batches: 2 pairs, then 1
    plan.val_ref_logps = loop.reference_logps(plan, items)
    metrics = loop.evaluate(plan)
    assert metrics["eval_loss"] == pytest.approx(float(want.mean()), rel=1e-5)
    margins = (pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1])
    assert metrics["eval_reward_accuracy"] == pytest.approx(float((margins > 0).float().mean()))
