"""Batched inference for evaluation: greedy generation, answer log-likelihoods, and
label scoring that reuses one prompt pass for every label.

Prompts are left-padded so every row's answer starts at the same column; batches
are formed from prompts of similar length and capped by a token budget, so memory
stays bounded whatever the dataset. Inputs go to the model's device (CUDA when eval put the
model there), and bf16 autocast is used for that device type where it has bf16. The
padding and position helpers live in `inference.tensors`, shared with serve's scheduler,
so eval and serve batch rows the same way and give the same greedy answer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.inference.tensors import autocast, left_pad, model_device, positions
from tuneforge.models import template

TOKEN_BUDGET = 8192  # prompt tokens per batch


@dataclass
class Generated:
    texts: list[str]
    seconds: float
    new_tokens: int


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
    device = model_device(model)
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
        with autocast(bf16, device):
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


@torch.inference_mode()
def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, batch_size: int = 16,
                    bf16: bool = False) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each answer after its prompt: perplexity on references."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    seqs = [p + a for p, a in zip(prompts, answers)]
    device = model_device(model)
    for batch in _batches([len(s) for s in seqs], batch_size):
        ids, mask = left_pad([seqs[i] for i in batch], pad_id, device)
        # rows are left-padded, so every answer sits in the last `tail` columns
        tail = max(len(answers[i]) for i in batch) + 1
        with autocast(bf16, device):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
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
    device = model_device(model)
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], pad_id, device)
        with autocast(bf16, device):
            first = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                          logits_to_keep=1)
        last = F.log_softmax(first.logits[:, -1].float(), -1)
        next_pos = mask.sum(-1, keepdim=True)
        for j, option in enumerate(options):
            total = last[:, option[0]].clone()
            if len(option) > 1:
                tail = torch.tensor(option[:-1], device=device).expand(len(batch), -1)
                ext = torch.cat([mask, torch.ones_like(tail)], dim=1)
                pos = next_pos + torch.arange(tail.shape[1], device=device)
                with autocast(bf16, device):
                    logits = model(input_ids=tail, attention_mask=ext, position_ids=pos,
                                   cache=copy.deepcopy(first.cache), use_cache=True).logits
                logps = F.log_softmax(logits.float(), -1)
                wanted = torch.tensor(option[1:], device=device).expand(len(batch), -1)
                total += logps.gather(-1, wanted[..., None])[..., 0].sum(-1)
            scores[batch, j] = total.cpu()
        if progress:
            progress(len(batch))
    return scores
