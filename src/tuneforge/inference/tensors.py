"""Tensor helpers shared by every batched forward: eval's generation and scoring
(`evaluate.engine`) and serve's scheduler (`inference.scheduler`); `shared_start` also
finds the prefix training computes once per packed row (`train.collate`).

Rows are left-padded, so the newest token of every row sits in the last column, and each
row gets explicit position ids counted over its real tokens only; a row therefore sees the
same positions whether it runs alone or next to a longer one. That is what makes batched
greedy output equal one-at-a-time output, in eval and in serve alike.
"""

from __future__ import annotations

import contextlib

import torch


def shared_start(rows: list[list[int]]) -> int:
    """How many tokens every row starts with, leaving each row at least one of its own."""
    first, length = rows[0], min(len(r) for r in rows) - 1
    for row in rows[1:]:
        length = next((t for t in range(length) if row[t] != first[t]), length)
    return length


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def autocast(bf16: bool, device: torch.device):
    """bf16 autocast on `device`'s type when asked (weights stay float32), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def left_pad(rows: list[list[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each [rows, longest]; padding on the left, masked out."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)  # built on the CPU, then one copy per batch


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens (padding gets 0; it is masked anyway)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
