"""Attention for packed rows that never computes across examples.

Packing puts several examples in one row. The stock path masks attention between
them with a block-diagonal mask, but still pays for the full row-by-row attention
(on CPU, the attention backward then costs more than all the linear layers
together). Here each example's slice gets its own causal attention call, so the
cost is the sum of squared example lengths instead of the squared row length.
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


@functools.lru_cache(maxsize=256)
def _prefix_mask(prefix: int, length: int) -> torch.Tensor:
    """[length, prefix + length]: True where a segment position may attend."""
    own = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.cat([torch.ones(length, prefix, dtype=torch.bool), own], dim=1)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, shared_prefix: int = 0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = cu_seq_lens_q.tolist()
    gqa = key.shape[1] != query.shape[1]
    # float32 on purpose (autocast would undo the cast): the CPU flash-attention backward
    # is about 3x slower in bfloat16
    q, k, v = query.float(), key.float(), value.float()
    p = dropout if module.training else 0.0
    with torch.autocast(device_type=query.device.type, enabled=False):
        parts = []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if b <= a:
                continue
            if not shared_prefix or i == 0:
                parts.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                            dropout_p=p, scale=scaling, enable_gqa=gqa))
                continue
            keys = torch.cat([k[:, :, :shared_prefix], k[:, :, a:b]], dim=2)
            values = torch.cat([v[:, :, :shared_prefix], v[:, :, a:b]], dim=2)
            parts.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values,
                                                        attn_mask=_prefix_mask(shared_prefix, b - a).to(q.device),
                                                        dropout_p=p, scale=scaling, enable_gqa=gqa))
    return torch.cat(parts, dim=2).to(query.dtype).transpose(1, 2).contiguous(), None


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
