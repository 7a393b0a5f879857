"""Batched inference for evaluation: greedy generation, answer log-likelihoods, and
label scoring that reuses one prompt pass for every label (and, given the labels,
generation continues from that same pass).

Prompts are left-padded so every row's answer starts at the same column; batches
are formed from prompts of similar length and capped by a token budget, so memory
stays bounded whatever the dataset. Inputs go to the model's device (CUDA when eval put the
model there), and bf16 autocast is used for that device type where it has bf16. The
padding and position helpers live in `inference.tensors`, shared with serve's scheduler,
so eval and serve batch rows the same way and give the same greedy answer.

A shared prefix is computed once. Eval's prompts of one variant all start with the same
tokens: the system prompt, and for the few-shot baseline the demonstrations too (about 85%
of a few-shot prompt, 40% of a zero-shot one in the demo's tickets). `SharedPrefix.of`
runs those tokens through the model once; each batch then starts from a copy of that cache
and runs only its rows' own tokens (left-padded after the prefix, positions continuing from
it), in generation, answer scoring and label scoring alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from tuneforge.inference.tensors import autocast, left_pad, model_device, positions, shared_start
from tuneforge.models import template

TOKEN_BUDGET = 8192  # prompt tokens per batch


@dataclass
class Generated:
    texts: list[str]
    seconds: float  # generation only: label scoring's own passes are not counted
    new_tokens: int
    scores: torch.Tensor | None = None  # [prompts, options] when options were given


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


@dataclass
class SharedPrefix:
    """The tokens every prompt starts with, and their key/value cache (one row)."""

    ids: list[int]
    cache: Any

    MIN_TOKENS = 16  # below this the copy per batch costs about what it saves

    @classmethod
    @torch.inference_mode()
    def of(cls, model, prompts: list[list[int]], bf16: bool = False) -> SharedPrefix | None:
        """The prompts' common prefix, leaving every prompt at least one token of its own;
        None when it is short, or when the model adds virtual tokens of its own (prefix and
        prompt tuning), which a cache computed here would not hold."""
        if len(prompts) < 2 or _prompt_learning(model):
            return None
        length = shared_start(prompts)
        if length < cls.MIN_TOKENS:
            return None
        device = model_device(model)
        ids = prompts[0][:length]
        with autocast(bf16, device):
            out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
        return cls(ids, out.cache)

    def rows(self, rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask, positions) of the rows' own tokens after the prefix; the mask covers
        prefix and rows, as the model needs it with the prefix's cache."""
        ids, mask = left_pad([r[len(self.ids):] for r in rows], pad_id, device)
        full = torch.cat([mask.new_ones(len(rows), len(self.ids)), mask], dim=1)
        return ids, full, len(self.ids) + positions(mask)

    def expand(self, rows: int) -> DynamicCache:
        """A copy of the prefix's cache for a batch of `rows` (the model grows it in place)."""
        return DynamicCache(ddp_cache_data=[(layer.keys.expand(rows, -1, -1, -1).contiguous(),
                                             layer.values.expand(rows, -1, -1, -1).contiguous())
                                            for layer in self.cache.layers])


def _prompt_learning(model) -> bool:
    """Prefix and prompt tuning add virtual tokens of their own, which a cache made here lacks."""
    return getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)


def _inputs(rows: list[list[int]], pad_id: int, device, prefix: SharedPrefix | None) -> dict[str, Any]:
    """Forward arguments for a batch: left-padded rows with their positions, or the rows'
    own tokens after a shared prefix with a copy of its cache."""
    if prefix is None:
        ids, mask = left_pad(rows, pad_id, device)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}
    ids, mask, pos = prefix.rows(rows, pad_id, device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "cache": prefix.expand(len(rows))}


def stop_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids plus the chat template's end-of-turn token."""
    return template.stop_ids(tokenizer, model.generation_config.eos_token_id)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
             bf16: bool = False, progress=None, prefix: SharedPrefix | None = None,
             options: list[list[int]] | None = None) -> Generated:
    """Greedy completions for token-id prompts, in the prompts' order. With `options`, also
    each option's log-probability after each prompt (as `score_options`), from the same
    prompt pass that generation then continues."""
    if options is not None and _prompt_learning(model):
        scores = score_options(model, prompts, options, tokenizer.pad_token_id, batch_size, bf16, prefix=prefix)
        return replace(generate(model, tokenizer, prompts, max_new_tokens, batch_size, bf16, progress, prefix),
                       scores=scores)
    texts: list[str | None] = [None] * len(prompts)
    stops = stop_ids(model, tokenizer)
    new_tokens, started, scoring = 0, time.perf_counter(), 0.0
    device = model_device(model)
    labels = _Options(options, device) if options is not None else None
    scores = torch.zeros(len(prompts), len(options)) if options is not None else None
    for batch in _batches([len(p) for p in prompts], batch_size):
        inputs = _inputs([prompts[i] for i in batch], tokenizer.pad_token_id, device, prefix)
        ids, cache = inputs["input_ids"], inputs.get("cache")
        if labels is not None:
            with autocast(bf16, device):
                first = model(**inputs, use_cache=True, logits_to_keep=1)
            mark = time.perf_counter()
            scores[batch] = labels.score(model, first, inputs["attention_mask"], bf16).cpu()
            scoring += time.perf_counter() - mark
            # generate runs what the cache lacks: the last prompt token again, then the answer
            cache = first.cache
            cache.crop(-1)
        if prefix is not None:  # generate counts the cached tokens as part of the input
            head = torch.tensor([prefix.ids], device=device).expand(len(batch), -1)
            ids = torch.cat([head, ids], dim=1)
        with autocast(bf16, device):
            out = model.generate(input_ids=ids, attention_mask=inputs["attention_mask"], cache=cache,
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
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
    return Generated([t or "" for t in texts], time.perf_counter() - started - scoring, new_tokens, scores)


@torch.inference_mode()
def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, batch_size: int = 16,
                    bf16: bool = False, prefix: SharedPrefix | None = None) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each answer after its prompt: perplexity on references."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    seqs = [p + a for p, a in zip(prompts, answers)]
    device = model_device(model)
    for batch in _batches([len(s) for s in seqs], batch_size):
        inputs = _inputs([seqs[i] for i in batch], pad_id, device, prefix)
        ids = inputs["input_ids"]
        # rows are left-padded, so every answer sits in the last `tail` columns
        tail = max(len(answers[i]) for i in batch) + 1
        with autocast(bf16, device):
            logits = model(**inputs, logits_to_keep=tail).logits
        logps = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, -tail + 1:, None])[..., 0].cpu()
        for row, i in enumerate(batch):
            n = len(answers[i])
            out[i] = (float(logps[row, -n:].sum()) if n else 0.0, n)
    return out


# option tokens scored per forward: the logits of a batch are [rows, this, vocabulary]
OPTION_TOKENS_PER_PASS = 64


def _option_groups(options: list[list[int]]) -> list[list[int]]:
    """Indices of the options with tokens after their first, in groups of at most
    OPTION_TOKENS_PER_PASS such tokens."""
    groups, current, tokens = [], [], 0
    for j, option in enumerate(options):
        n = len(option) - 1
        if n == 0:  # a one-token option is scored by the prompt pass alone
            continue
        if current and tokens + n > OPTION_TOKENS_PER_PASS:
            groups.append(current)
            current, tokens = [], 0
        current.append(j)
        tokens += n
    return groups + [current] if current else groups


def _option_tree(options: list[list[int]], group: list[int], device):
    """The group's options (all tokens but the last) one after another: ids, each token's
    offset in its option, its option, the token it predicts, and the [T, T] mask that lets
    a token see only the earlier tokens of its own option."""
    ids, offset, owner, target = [], [], [], []
    for j in group:
        option = options[j]
        for i in range(len(option) - 1):
            ids.append(option[i])
            offset.append(i)
            owner.append(j)
            target.append(option[i + 1])
    off, own = torch.tensor(offset, device=device), torch.tensor(owner, device=device)
    mask = (own[:, None] == own[None, :]) & (off[None, :] <= off[:, None])
    return torch.tensor(ids, device=device), off, own, torch.tensor(target, device=device), mask


class _Options:
    """Label options laid out for scoring after a prompt pass (see `score_options`)."""

    def __init__(self, options: list[list[int]], device):
        self.first_tokens = torch.tensor([option[0] for option in options], device=device)
        self.trees = [_option_tree(options, group, device) for group in _option_groups(options)]

    def score(self, model, first, mask: torch.Tensor, bf16: bool) -> torch.Tensor:
        """[rows, options] from the prompt pass `first` (its last logits and its cache, which is
        left as it was) and the prompts' attention mask."""
        device = mask.device
        total = F.log_softmax(first.logits[:, -1].float(), -1)[:, self.first_tokens]
        next_pos = mask.sum(-1, keepdim=True)
        rows, seen = mask.shape
        for ids, off, own, target, tree in self.trees:
            width = ids.shape[0]
            sees = torch.cat([mask.bool()[:, None, :].expand(rows, width, seen),
                              tree.expand(rows, width, width)], dim=-1)[:, None]
            with autocast(bf16, device):
                logits = model(input_ids=ids.expand(rows, -1), attention_mask=sees, position_ids=next_pos + off,
                               cache=first.cache, use_cache=True).logits
            first.cache.crop(-width)  # the next group continues the prompt, not this group
            logps = F.log_softmax(logits.float(), -1).gather(-1, target.expand(rows, -1)[..., None])[..., 0]
            total.index_add_(1, own, logps)
        return total


@torch.inference_mode()
def score_options(model, prompts: list[list[int]], options: list[list[int]], pad_id: int, batch_size: int = 16,
                  bf16: bool = False, progress=None, prefix: SharedPrefix | None = None) -> torch.Tensor:
    """[prompts, options] total log-probability of each option (its tokens and end marker)
    after each prompt. The prompt pass is run once; then the options' tokens go through
    in one pass (per group of options) after the prompt's cache, each attending to the
    prompt and to its own option only."""
    scores = torch.zeros(len(prompts), len(options))
    if _prompt_learning(model):  # its virtual tokens do not go with a cache made outside it
        for j, option in enumerate(options):
            found = answer_logprobs(model, prompts, [option] * len(prompts), pad_id, batch_size, bf16)
            scores[:, j] = torch.tensor([logp for logp, _ in found])
        return scores
    device = model_device(model)
    labels = _Options(options, device)
    for batch in _batches([len(p) for p in prompts], batch_size):
        inputs = _inputs([prompts[i] for i in batch], pad_id, device, prefix)
        with autocast(bf16, device):
            first = model(**inputs, use_cache=True, logits_to_keep=1)
        scores[batch] = labels.score(model, first, inputs["attention_mask"], bf16).cpu()
        if progress:
            progress(len(batch))
    return scores
