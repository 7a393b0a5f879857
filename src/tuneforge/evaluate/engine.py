"""Batched inference for evaluation: greedy generation, answer log-likelihoods, and
label scoring that reuses one prompt pass for every label.

Prompts are left-padded so every row's answer starts at the same column; batches
are formed from prompts of similar length and capped by a token budget, so memory
stays bounded whatever the dataset. Inputs go to the model's device (CUDA when eval put the
model there), and bf16 autocast is used for that device type where it has bf16.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.models import template

TOKEN_BUDGET = 8192  # prompt tokens per batch


@dataclass
class Generated:
    texts: list[str]
    seconds: float
    new_tokens: int


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _autocast(bf16: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _batches(lengths: list[int], max_batch: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        width = max([lengths[j] for j in current] + [lengths[i]])
        if current and (len(current) >= max_batch or width * (len(current) + 1) > TOKEN_BUDGET):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _left_pad(rows: list[list[int]], pad_id: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)  # built on the CPU, then one copy per batch


def stop_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids plus the chat template's end-of-turn token."""
    return template.stop_ids(tokenizer, model.generation_config.eos_token_id)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
             bf16: bool = False, progress=None) -> Generated:
    """Greedy completions for token-id prompts, in the prompts' order."""
    texts: list[str | None] = [None] * len(prompts)
    stops = stop_ids(model, tokenizer)
    new_tokens, started = 0, time.perf_counter()
    device = _device(model)
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = _left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
        with _autocast(bf16, device):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        for row, i in zip(out[:, ids.shape[1]:], batch):
            keep = []
            for token in row.tolist():
                if token in stops:
                    break
                keep.append(token)
            new_tokens += len(keep) + 1
            texts[i] = tokenizer.decode(keep, skip_special_tokens=True).strip()
        if progress:
            progress(len(batch))
    return Generated([t or "" for t in texts], time.perf_counter() - started, new_tokens)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, batch_size: int = 16,
                    bf16: bool = False) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each answer after its prompt: perplexity on references."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    seqs = [p + a for p, a in zip(prompts, answers)]
    device = _device(model)
    for batch in _batches([len(s) for s in seqs], batch_size):
        ids, mask = _left_pad([seqs[i] for i in batch], pad_id, device)
        # rows are left-padded, so every answer sits in the last `tail` columns
        tail = max(len(answers[i]) for i in batch) + 1
        with _autocast(bf16, device):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                           logits_to_keep=tail).logits
        logps = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, -tail + 1:, None])[..., 0].cpu()
        for row, i in enumerate(batch):
            n = len(answers[i])
            out[i] = (float(logps[row, -n:].sum()) if n else 0.0, n)
    return out


@torch.inference_mode()
def score_options(model, prompts: list[list[int]], options: list[list[int]], pad_id: int, batch_size: int = 16,
                  bf16: bool = False, progress=None) -> torch.Tensor:
    """[prompts, options] total log-probability of each option (its tokens and end marker)
    after each prompt; the prompt pass is run once and its cache reused for every option."""
    scores = torch.zeros(len(prompts), len(options))
    device = _device(model)
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = _left_pad([prompts[i] for i in batch], pad_id, device)
        with _autocast(bf16, device):
            first = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                          logits_to_keep=1)
        last = F.log_softmax(first.logits[:, -1].float(), -1)
        next_pos = mask.sum(-1, keepdim=True)
        for j, option in enumerate(options):
            total = last[:, option[0]].clone()
            if len(option) > 1:
                tail = torch.tensor(option[:-1], device=device).expand(len(batch), -1)
                ext = torch.cat([mask, torch.ones_like(tail)], dim=1)
                pos = next_pos + torch.arange(tail.shape[1], device=device)
                with _autocast(bf16, device):
                    logits = model(input_ids=tail, attention_mask=ext, position_ids=pos,
                                   cache=copy.deepcopy(first.cache), use_cache=True).logits
                logps = F.log_softmax(logits.float(), -1)
                wanted = torch.tensor(option[1:], device=device).expand(len(batch), -1)
                total += logps.gather(-1, wanted[..., None])[..., 0].sum(-1)
            scores[batch, j] = total.cpu()
        if progress:
            progress(len(batch))
    return scores
