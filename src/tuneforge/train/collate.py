"""Records -> token ids with loss masks -> batches.

Loss masking: the conversation is rendered with the model's chat template and
only the assistant turns (content and the end-of-turn token, so the model learns
to stop) are trained, unless `train_on_inputs`. Turns with `weight: 0` are not
trained. The spans come from rendering growing prefixes of the conversation, so
any template that renders prefixes consistently works.

Batches are either packed (all examples of a step concatenated into one row,
position ids restarting at each example, so attention stays inside each
example and no compute is spent on padding) or padded, with examples of similar
length grouped so padding stays small. A packed row ends each example at the position
that predicts its last trained token: the end-of-turn token itself predicts nothing.

A packed row can also share a prefix: when the step's examples start with the same
untrained tokens (the system prompt, the template's preamble), the row holds that
prefix once, followed by each example's remainder, which attends to the prefix and
to itself (train/attention.py). In classification data the shared system prompt is
often most of every example, so this removes most of the step's work; the maths is
the same as running every example whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tuneforge.inference.tensors import shared_start
from tuneforge.models import template

IGNORE = -100
# below this many tokens a shared prefix saves less than the extra attention calls cost
MIN_SHARED_PREFIX = 8


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    notes: list[str] = field(default_factory=list)


class Encoder:
    def __init__(self, tokenizer, max_seq_len: int, train_on_inputs: bool = False):
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_inputs = train_on_inputs
        self.stats = EncodeStats()

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return template.render(self.tokenizer, messages, generation_prompt)

    def _spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            start = self.render(messages[:i], generation_prompt=True)
            end = self.render(messages[: i + 1])
            if not (full.startswith(start) and full.startswith(end)):
                raise ValueError("the chat template does not render conversation prefixes consistently")
            tail = end[len(start):]
            # the turn's end marker is trained, trailing newlines after it are not
            spans.append((len(start), len(start) + len(tail.rstrip("\n"))))
        return full, spans

    def _tokenize(self, text: str, spans: list[tuple[int, int]] | None) -> Example | None:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=spans is not None)
        ids = enc["input_ids"]
        if spans is None:
            labels = list(ids)
        else:
            labels = [IGNORE] * len(ids)
            for t, (a, b) in enumerate(enc["offset_mapping"]):
                if any(s <= a < e for s, e in spans) and b > a:
                    labels[t] = ids[t]
        if len(ids) > self.max_seq_len:
            self.stats.truncated += 1
            ids, labels = ids[: self.max_seq_len], labels[: self.max_seq_len]
        if all(label == IGNORE for label in labels[1:]):
            self.stats.dropped_no_target += 1
            return None
        self.stats.examples += 1
        return Example(ids, labels)

    def chat(self, messages: list[dict[str, Any]]) -> Example | None:
        full, spans = self._spans(messages)
        return self._tokenize(full, None if self.train_on_inputs else spans)

    def texts(self, text: str) -> list[Example]:
        """Continued pre-training: the text plus EOS, cut into max_seq_len chunks."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        chunks = [ids[i:i + self.max_seq_len] for i in range(0, len(ids), self.max_seq_len)]
        self.stats.examples += len(chunks)
        return [Example(c, list(c)) for c in chunks if len(c) > 1]

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example] | None:
        pair = []
        for side in ("chosen", "rejected"):
            messages = record["messages"] + [{"role": "assistant", "content": record[side]}]
            full, spans = self._spans(messages)
            example = self._tokenize(full, spans)
            if example is None:
                return None
            pair.append(example)
        return pair[0], pair[1]


def targets(example: Example) -> list[int]:
    """Next-token targets: position t is scored on token t+1 of the same example."""
    return example.labels[1:] + [IGNORE]


@dataclass
class Batch:
    input_ids: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    segment: torch.Tensor  # example index (within the batch) of every position
    real_tokens: int
    target_tokens: int
    cu_seq_lens: torch.Tensor | None = None  # packed: example boundaries, [0, len0, len0+len1, ...]
    prefix_len: int = 0  # packed with a shared prefix: its length; cu_seq_lens then starts [0, prefix_len, ...]

    def keep(self) -> torch.Tensor:
        return self.targets != IGNORE


def shared_prefix_length(examples: list[Example]) -> int:
    """Tokens every example starts with and no example is trained on, including the
    target of the prefix's last position (each example's next token); 0 when that is
    shorter than MIN_SHARED_PREFIX or there is nothing to share it with."""
    if len(examples) < 2:
        return 0
    n = shared_start([ex.input_ids for ex in examples])
    for ex in examples:
        # position t is trained on labels[t + 1]: the prefix's positions must carry no loss
        n = next((t for t, label in enumerate(ex.labels[1:n + 1]) if label != IGNORE), n)
    return n if n >= MIN_SHARED_PREFIX else 0


def needed_length(example: Example) -> int:
    """Positions a packed row must compute for `example`: up to the one that predicts its
    last trained token. Later positions (that token itself, the newline after the turn)
    predict nothing, and causal attention never lets them change an earlier one."""
    last = next((t for t in range(len(example) - 1, 0, -1) if example.labels[t] != IGNORE), len(example))
    return last


def packed_batch(examples: list[Example], share_prefix: bool = False) -> Batch:
    prefix = shared_prefix_length(examples) if share_prefix else 0
    ids, tgt, pos, seg, bounds = [], [], [], [], [0]
    if prefix:
        ids += examples[0].input_ids[:prefix]
        tgt += [IGNORE] * prefix
        pos += range(prefix)
        seg += [0] * prefix
        bounds.append(prefix)
    for j, ex in enumerate(examples):
        end = needed_length(ex)
        ids += ex.input_ids[prefix:end]
        tgt += targets(ex)[prefix:end]
        pos += range(prefix, end)
        seg += [j] * (end - prefix)
        bounds.append(len(ids))
    t = torch.tensor(tgt).unsqueeze(0)
    # real_tokens counts every example whole (shared prefix and uncomputed tail included), so
    # tokens/s stays a rate over the data, comparable with padded batches and other tools
    return Batch(torch.tensor(ids).unsqueeze(0), t, None, torch.tensor(pos).unsqueeze(0),
                 torch.tensor(seg).unsqueeze(0), sum(len(ex) for ex in examples), int((t != IGNORE).sum()),
                 torch.tensor(bounds), prefix)


def padded_batch(examples: list[Example], pad_id: int) -> Batch:
    width = max(len(ex) for ex in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id)
    tgt = torch.full((n, width), IGNORE)
    mask = torch.zeros((n, width), dtype=torch.long)
    seg = torch.zeros((n, width), dtype=torch.long)
    for j, ex in enumerate(examples):
        # right padding: the model attends left to right, pads sit after the content
        ids[j, : len(ex)] = torch.tensor(ex.input_ids)
        tgt[j, : len(ex)] = torch.tensor(targets(ex))
        mask[j, : len(ex)] = 1
        seg[j] = j
    real = int(mask.sum())
    return Batch(ids, tgt, mask, None, seg, real, int((tgt != IGNORE).sum()))


def epoch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Example indices per batch for one epoch; deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        # sort inside windows of 50 batches, then shuffle the batches: little padding, still random
        window = batch_size * 50
        chunks = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window].tolist(), key=lambda i: lengths[i])
            chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        return [chunks[i] for i in rng.permutation(len(chunks))]
    order = order.tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
