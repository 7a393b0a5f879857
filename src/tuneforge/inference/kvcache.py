"""The key/value cache of a running batch whose rows started at different times.

Each row's cache is left-padded to the batch's length, with an attention mask that is 1
only over the row's real tokens, so every row's newest token sits in the last column:

    row 0:  . . a b c d e      (joined first: 5 tokens so far)
    row 1:  . . . . x y z      (joined later: 3 tokens)
    row 2:  p q r s t u v      (a long prompt)

- `join` adds a freshly prefilled group: both caches are left-padded (zeros under a 0
  mask) to the longer one's length and concatenated along the batch axis.
- `keep` drops finished rows by indexing the batch axis, then cuts the columns that are
  now padding in every remaining row, so a batch is never wider than its longest row.
- Positions are counted per row over its real tokens (`next_positions`), so a row decodes
  exactly as it would alone: the padding is masked out and the rotary positions match.

Only plain `DynamicLayer` caches (full attention in every layer) can be padded this way;
a model with sliding-window or linear-attention layers is refused by `check_model`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tuneforge.errors import Problem, TuneforgeError


def check_model(model, where: str = "") -> None:
    """Refuse a model whose cache layers cannot be left-padded and concatenated."""
    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
    if kinds - {DynamicLayer.__name__}:
        raise TuneforgeError(Problem(
            "unsupported_model", f"this model's cache has {', '.join(sorted(kinds))} layers (sliding-window or "
            "linear attention); the serve engine batches only full-attention models; serve another --model", where))


class KVBatch:
    """The cache and attention mask of the running rows, in batch order."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, time], 1 over real tokens

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def next_positions(self) -> torch.Tensor:
        """[rows, 1] position of each row's next token: how many real tokens it has."""
        return self.mask.sum(-1, keepdim=True)

    def step_mask(self) -> torch.Tensor:
        """The mask for one decode step: every row's next token is real."""
        return torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)

    def stepped(self, mask: torch.Tensor) -> None:
        """After a decode step: the model grew the cache in place by one column."""
        self.mask = mask

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add the rows of a prefilled group after the running ones."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        layers = [(torch.cat([_pad(a.keys, width), _pad(b.keys, width)]),
                   torch.cat([_pad(a.values, width), _pad(b.values, width)]))
                  for a, b in zip(self.cache.layers, cache.layers)]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad(self.mask, width), _pad(mask, width)])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices in batch order), dropping the others' cache."""
        if len(rows) == len(self):
            return
        if not rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask[index]
        lead = int(self.mask.any(0).int().argmax())  # columns that are padding in every kept row
        self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, lead:]
            layer.values = layer.values[index, :, lead:]


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the time axis (-2 of [rows, heads, time, dim] caches, -1 of [rows, time]
    masks) with zeros up to `width`."""
    if t.dim() == 2:
        return F.pad(t, (width - t.shape[1], 0))
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
