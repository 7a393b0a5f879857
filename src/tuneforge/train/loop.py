"""The training loop: plain PyTorch with Accelerate for devices and DDP; reads top to bottom.

One optimizer step = `grad_accum` micro-batches of `batch_size` examples on each process.
Loss is summed over trained tokens and divided by the step's trained tokens, so
packing or padding never changes what is learned. Logits are computed only at
positions that carry a loss (the LM head is a fifth of this model's compute).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tuneforge.train.checkpoint import (Checkpoints, atomic_save, load_state, load_trainable, rng_state,
                                        set_rng_state, trainable_state)
from tuneforge.train.collate import IGNORE, Batch, Example, epoch_order, packed_batch, padded_batch


EVAL_BATCH_FACTOR = 4


@dataclass
class LoopState:
    step: int = 0
    best_eval: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    real_tokens: int = 0
    target_tokens: int = 0
    train_seconds: float = 0.0
    last_eval: float | None = None
    stopped_early: bool = False


@dataclass
class Plan:
    model: Any
    optimizer: Any
    scheduler: Any
    accelerator: Any
    objective: str
    train: list  # Example, or (chosen, rejected) pairs for dpo
    val: list
    batch_size: int
    grad_accum: int
    total_steps: int
    steps_per_epoch: int
    seed: int
    packing: bool
    pad_id: int
    bf16: bool
    max_grad_norm: float
    eval_steps: int
    save_steps: int
    patience: int | None
    virtual_tokens: int
    beta: float
    checkpoints: Checkpoints
    best_path: Path
    log: Callable[[int, dict[str, Any]], None]
    progress: Any = None
    shared_prefix: bool = False  # packed rows hold the step's shared untrained prefix once
    ref_logps: torch.Tensor | None = None
    val_ref_logps: torch.Tensor | None = None
    state: LoopState = field(default_factory=LoopState)
    order: list = field(default_factory=list)
    order_epoch: int = -1


def _examples(items: list, objective: str) -> list[Example]:
    if objective == "dpo":
        return [ex for pair in items for ex in pair]
    return items


def _length(item) -> int:
    return sum(len(x) for x in item) if isinstance(item, tuple) else len(item)


def make_batch(plan: Plan, items: list) -> Batch:
    examples = _examples(items, plan.objective)
    if plan.packing:
        return packed_batch(examples, share_prefix=plan.shared_prefix)
    return padded_batch(examples, plan.pad_id)


def _autocast(plan: Plan):
    device = plan.accelerator.device.type
    if plan.bf16:
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def token_logps(plan: Plan, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of each trained target token, its target id and its example index."""
    device = plan.accelerator.device
    keep = batch.keep()
    keep_model = keep
    if plan.virtual_tokens:
        # prompt tuning puts virtual tokens in front of the sequence
        keep_model = torch.cat([torch.zeros(keep.shape[0], plan.virtual_tokens, dtype=torch.bool), keep], dim=1)
    inputs = {"input_ids": batch.input_ids.to(device), "logits_to_keep": keep_model.to(device), "use_cache": False}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids.to(device)
    if batch.cu_seq_lens is not None:
        inputs["cu_seq_lens_q"] = batch.cu_seq_lens
    if batch.prefix_len:
        inputs["shared_prefix"] = batch.prefix_len
    with _autocast(plan):
        logits = model(**inputs).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    target = batch.targets[keep].to(device)
    logps = -F.cross_entropy(logits, target, reduction="none")
    return logps, target, batch.segment[keep].to(device)


def dpo_terms(plan: Plan, model, batch: Batch, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and whether the policy prefers chosen (reward accuracy)."""
    logps, _, segment = token_logps(plan, model, batch)
    n = int(batch.segment.max()) + 1
    sums = torch.zeros(n, device=logps.device).index_add(0, segment, logps)
    chosen, rejected = sums[0::2], sums[1::2]
    margin = (chosen - ref[:, 0].to(logps.device)) - (rejected - ref[:, 1].to(logps.device))
    return -F.logsigmoid(plan.beta * margin), (margin > 0).float()


@torch.no_grad()
def reference_logps(plan: Plan, items: list) -> torch.Tensor:
    """Sequence log-probs of chosen and rejected under the reference (base) model, computed once."""
    model = plan.accelerator.unwrap_model(plan.model)
    model.eval()
    disable = getattr(model, "disable_adapter", None)
    out = []
    with (disable() if disable else contextlib.nullcontext()):
        for start in range(0, len(items), plan.batch_size):
            chunk = items[start:start + plan.batch_size]
            batch = make_batch(plan, chunk)
            logps, _, segment = token_logps(plan, model, batch)
            sums = torch.zeros(2 * len(chunk), device=logps.device).index_add(0, segment, logps)
            out.append(sums.view(-1, 2).cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0, 2)


@torch.no_grad()
def forward_only(plan: Plan, items: list) -> None:
    """The model on `items` without gradients (int8_base reads its input ranges so)."""
    model = plan.accelerator.unwrap_model(plan.model)
    model.eval()
    for start in range(0, len(items), plan.batch_size):
        token_logps(plan, model, make_batch(plan, items[start:start + plan.batch_size]))
    model.train()


@torch.no_grad()
def evaluate(plan: Plan) -> dict[str, float]:
    model = plan.accelerator.unwrap_model(plan.model)
    model.eval()
    total, count, correct = 0.0, 0, 0.0
    # without gradients a packed row of more examples costs little memory, and shares its prefix more
    size = plan.batch_size * (EVAL_BATCH_FACTOR if plan.packing else 1)
    for start in range(0, len(plan.val), size):
        chunk = plan.val[start:start + size]
        batch = make_batch(plan, chunk)
        if plan.objective == "dpo":
            losses, right = dpo_terms(plan, model, batch, plan.val_ref_logps[start:start + len(chunk)])
            total += float(losses.sum())
            correct += float(right.sum())
            count += len(chunk)
        else:
            logps, _, _ = token_logps(plan, model, batch)
            total += float(-logps.sum())
            count += logps.numel()
    model.train()
    result = {"eval_loss": total / max(count, 1)}
    if plan.objective == "dpo":
        result["eval_reward_accuracy"] = correct / max(count, 1)
    return result


def _my_indices(plan: Plan, step: int, world: int, rank: int) -> list[list[int]]:
    """Train indices of the micro-batches this process runs at optimizer step `step`;
    a pure function of (seed, step), which is what makes resume exact."""
    per_step = plan.grad_accum * world
    epoch, index = divmod(step, plan.steps_per_epoch)
    if plan.order_epoch != epoch:
        plan.order = epoch_order([_length(x) for x in plan.train], plan.batch_size, plan.seed, epoch,
                                 group_by_length=not plan.packing)
        plan.order_epoch = epoch
    return plan.order[index * per_step:(index + 1) * per_step][rank::world]


def _step_batches(plan: Plan, step: int, world: int, rank: int) -> list[list]:
    return [[plan.train[i] for i in ids] for ids in _my_indices(plan, step, world, rank)]


def save_checkpoint(plan: Plan) -> Path | None:
    acc = plan.accelerator
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        model = acc.unwrap_model(plan.model)
        path = plan.checkpoints.save(plan.state.step, {
            "weights": trainable_state(model),
            "optimizer": plan.optimizer.state_dict(),
            "scheduler": plan.scheduler.state_dict(),
            "rng": rng_state(),
            "state": asdict(plan.state),
        })
    acc.wait_for_everyone()
    return path


def restore_checkpoint(plan: Plan, path: Path) -> None:
    payload = load_state(path)  # weights_only: a checkpoint from elsewhere must not run code
    load_trainable(plan.accelerator.unwrap_model(plan.model), payload["weights"])
    plan.optimizer.load_state_dict(payload["optimizer"])
    plan.scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    plan.state = LoopState(**payload["state"])


def run(plan: Plan) -> LoopState:
    acc, model, state = plan.accelerator, plan.model, plan.state
    world, rank = acc.num_processes, acc.process_index
    model.train()
    while state.step < plan.total_steps and not state.stopped_early:
        batches = [make_batch(plan, items) for items in _step_batches(plan, state.step, world, rank)]
        started = time.perf_counter()
        step_targets = sum(b.target_tokens for b in batches) if plan.objective != "dpo" else 0
        # every process runs the same number of backward passes, or DDP would wait forever
        while len(batches) < plan.grad_accum:
            batches.append(None)
        loss_value = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with (contextlib.nullcontext() if sync else acc.no_sync(model)):
                real = batch if batch is not None else make_batch(plan, plan.train[:1])
                if plan.objective == "dpo":
                    losses, _ = dpo_terms(plan, model, real, _ref_for(plan, real, state.step, i, world, rank))
                    loss = losses.sum() / (plan.batch_size * plan.grad_accum)
                else:
                    logps, _, _ = token_logps(plan, model, real)
                    loss = -logps.sum() / max(step_targets, 1)
                if batch is None:
                    loss = loss * 0.0
                acc.backward(loss)
                loss_value += float(loss.detach())
        grad_norm = acc.clip_grad_norm_(model.parameters(), plan.max_grad_norm)
        plan.optimizer.step()
        plan.scheduler.step()
        plan.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        real_tokens = sum(b.real_tokens for b in batches if b is not None)
        state.step += 1
        state.train_seconds += elapsed
        state.real_tokens += real_tokens * world
        state.target_tokens += step_targets * world
        row = {"epoch": round(state.step / plan.steps_per_epoch, 3), "loss": loss_value,
               "lr": plan.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
               "tokens_per_s": round(real_tokens * world / max(elapsed, 1e-9), 1)}
        if state.step % plan.eval_steps == 0 or state.step == plan.total_steps:
            row.update(_eval_and_track_best(plan))
        if acc.is_main_process:
            plan.log(state.step, row)
        if plan.progress:
            plan.progress(state, row)
        if state.step % plan.save_steps == 0 and state.step < plan.total_steps:
            save_checkpoint(plan)
    return state


def _ref_for(plan: Plan, batch: Batch, step: int, micro: int, world: int, rank: int) -> torch.Tensor:
    """Reference log-probs of the pairs in this micro-batch, looked up by their train index."""
    mine = _my_indices(plan, step, world, rank)
    ids = mine[micro] if micro < len(mine) else [0]
    return plan.ref_logps[ids]


def _eval_and_track_best(plan: Plan) -> dict[str, float]:
    if not plan.val:
        return {}
    state = plan.state
    metrics = evaluate(plan)
    state.last_eval = metrics["eval_loss"]
    if state.best_eval is None or metrics["eval_loss"] < state.best_eval - 1e-6:
        state.best_eval, state.best_step, state.bad_evals = metrics["eval_loss"], state.step, 0
        if plan.accelerator.is_main_process:
            atomic_save(trainable_state(plan.accelerator.unwrap_model(plan.model)), plan.best_path)
    else:
        state.bad_evals += 1
        if plan.patience is not None and state.bad_evals >= plan.patience:
            state.stopped_early = True
    return metrics


def auto_eval_steps(total_steps: int, train: list, val: list, examples_per_step: int) -> int:
    """About ten validations per run, fewer where one would cost more than a tenth of the
    training between two of them, and at least three.

    A validation pass is a forward only, about a third of a training step's work per token.
    A short run with a large validation set (the demo: 160 steps of 8, 79 validation
    examples) otherwise spends a fifth of its time validating."""
    train_tokens = sum(_length(x) for x in train)
    val_tokens = sum(_length(x) for x in val)
    step_tokens = examples_per_step * train_tokens / max(len(train), 1)
    cost = val_tokens / max(3 * step_tokens, 1)  # in training steps
    return max(1, min(max(total_steps // 10, math.ceil(10 * cost)), total_steps // 3))


def steps_for(n_items: int, batch_size: int, grad_accum: int, world: int, epochs: int) -> tuple[int, int]:
    per_epoch = max(1, math.ceil(math.ceil(n_items / batch_size) / (grad_accum * world)))
    return per_epoch, per_epoch * epochs
