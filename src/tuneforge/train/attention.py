"""Attention for packed rows that never computes across examples.

Packing puts several examples in one row. The stock path masks attention between
them with a block-diagonal mask, but still pays for the full row-by-row attention
(on CPU, the attention backward then costs more than all the linear layers
together). Here each example's slice gets its own causal attention, so the cost is
the sum of squared example lengths instead of the squared row length. Where the
examples are of similar length (short classification queries) they are padded to
one width and run as one batched call rather than one call per example.
The example boundaries travel as `cu_seq_lens_q`, the keyword transformers
already forwards to attention functions for variable-length batches.

With `shared_prefix=P` (train/collate.py) the row's first P tokens are a prefix that
every later segment continues: the prefix attends causally to itself, and each
segment to the whole prefix and causally to itself, as if it were written out
in full in front of every example.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "tuneforge_packed"
_registered = False
# one attention call over padded segments beats a call per segment until padding makes it
# do this many times the work (each call and its backward carry fixed costs on a CPU)
PAD_COST = 1.5


@functools.lru_cache(maxsize=256)
def _prefix_mask(prefix: int, length: int) -> torch.Tensor:
    """[length, prefix + length]: True where a segment position may attend."""
    own = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.cat([torch.ones(length, prefix, dtype=torch.bool), own], dim=1)


def _one_by_one(q, k, v, spans, prefix: int, **sdpa) -> list[torch.Tensor]:
    parts = []
    for a, b in spans:
        if not prefix:
            parts.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                        **sdpa))
            continue
        keys = torch.cat([k[:, :, :prefix], k[:, :, a:b]], dim=2)
        values = torch.cat([v[:, :, :prefix], v[:, :, a:b]], dim=2)
        parts.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values,
                                                    attn_mask=_prefix_mask(prefix, b - a).to(q.device), **sdpa))
    return parts


def _side_by_side(q, k, v, spans, prefix: int, **sdpa) -> torch.Tensor:
    """The segments right-padded to one width and stacked as a batch: one attention call
    (and one backward) instead of one per segment. Padded queries attend to something
    (the prefix, or themselves) so nothing is NaN; they are dropped from the result."""
    width = max(b - a for a, b in spans)
    starts = torch.tensor([a for a, _ in spans], device=q.device)
    lengths = torch.tensor([b - a for a, b in spans], device=q.device)
    offsets = torch.arange(width, device=q.device)
    valid = (offsets < lengths[:, None]).reshape(-1)
    index = (starts[:, None] + offsets).reshape(-1).masked_fill(~valid, 0)

    def stack(t: torch.Tensor) -> torch.Tensor:  # [1, heads, row, d] -> [segments, heads, width, d]
        return t[0].index_select(1, index).unflatten(1, (len(spans), width)).transpose(0, 1)

    qs, ks, vs = stack(q), stack(k), stack(v)
    if prefix:
        shape = (len(spans), -1, -1, -1)
        ks = torch.cat([k[:, :, :prefix].expand(shape), ks], dim=2)
        vs = torch.cat([v[:, :, :prefix].expand(shape), vs], dim=2)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=_prefix_mask(prefix, width).to(q.device), **sdpa)
    else:
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, **sdpa)
    return out.transpose(0, 1).flatten(1, 2)[:, valid].unsqueeze(0)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, shared_prefix: int = 0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = cu_seq_lens_q.tolist()
    spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    # float32 on purpose (autocast would undo the cast): the CPU flash-attention backward
    # is about 3x slower in bfloat16
    q, k, v = query.float(), key.float(), value.float()
    sdpa = {"dropout_p": dropout if module.training else 0.0, "scale": scaling,
            "enable_gqa": key.shape[1] != query.shape[1]}
    with torch.autocast(device_type=query.device.type, enabled=False):
        parts = []
        if shared_prefix:  # the prefix attends causally to itself; it is the first span
            (a, b), spans = spans[0], spans[1:]
            parts.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                        **sdpa))
        if spans and _pads_little(spans, shared_prefix):
            parts.append(_side_by_side(q, k, v, spans, shared_prefix, **sdpa))
        else:
            parts += _one_by_one(q, k, v, spans, shared_prefix, **sdpa)
    return torch.cat(parts, dim=2).to(query.dtype).transpose(1, 2).contiguous(), None


def _pads_little(spans: list[tuple[int, int]], prefix: int) -> bool:
    """Whether padding every segment to the longest costs at most PAD_COST times the
    attention the segments need (short examples of similar length: classification data)."""
    lengths = [b - a for a, b in spans]
    width = max(lengths)
    need = sum(n * (prefix + n) for n in lengths)
    return len(spans) > 1 and len(spans) * width * (prefix + width) <= PAD_COST * need


def use_packed_attention(model) -> None:
    """Switch a loaded model to packed attention (padded batches still work: they fall back to sdpa)."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if not _registered:
        AttentionInterface.register(NAME, packed_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _registered = True
    model.set_attn_implementation(NAME)
