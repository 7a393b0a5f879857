"""Many LoRA adapters on one base model, applied per row of a batch in two matmuls a layer.

    slots = LoraSlots(model)
    slots.add("a0", tensors, scales)        # tensors: {module name: (A [r, in], B [out, r])}
    slots.route(["a0", None, "a0"])         # rows 0 and 2 on adapter a0, row 1 on the base
    model(...)                              # every wrapped Linear adds its rows' LoRA terms
    slots.remove("a0")

Why not PEFT's mixed batches (`adapter_names=[...]`): PEFT loops over the adapters present
in the batch in every LoRA layer, gathering each one's rows, running its two small matmuls
and scattering the result back. With four adapters on a 30-layer model that is about 4 x 210
gather/matmul/scatter rounds per decode step, and on a CPU their fixed cost, not the
arithmetic, is what a step pays for (measured by benchmarks/serve_bench.py: 4 mixed
adapters were 23% slower than 1). Here each wrapped layer holds every loaded adapter's A
matrices stacked into one [R, in] matrix and the B matrices (scaling folded in) into one
[out, R], R the sum of their ranks. A step computes x @ A_all.T for all rows at once, zeroes
each row's columns that belong to other adapters (a per-row mask looked up from a small
table), and adds (.) @ B_all.T: two matmuls and one multiply per layer whatever the number
of adapters, at the price of some wasted arithmetic on the zeroed columns (R/in extra, small
next to the base layer for ranks used in practice). A batch with one adapter uses that
adapter's slice with no mask, and a batch on the base alone skips the LoRA terms entirely.

Only plain LoRA on nn.Linear layers is served this way (the adapter set refuses the rest):
y = base(x) + (x @ A.T) @ B.T * scale, with scale = alpha / r (alpha / sqrt(r) with rsLoRA).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LoraSlots:
    """The routing every wrapped layer reads: which adapter each row of the next forward uses."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers: dict[str, MultiLoraLinear] = {}
        self.order: list[str] = []  # adapter keys, in the column order of every layer
        self.rows: torch.Tensor | None = None  # [batch] index into each layer's table; 0 = the base
        self.single: str | None = None  # every row on this one adapter: slice, no mask
        self.idle = True  # every row on the base: skip the LoRA terms

    def add(self, key: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], scales: dict[str, float]) -> None:
        """Adapter `key`: for each module name, its A [r, in] and B [out, r], and its scale."""
        if key in self.order:
            raise ValueError(f"adapter {key} is already loaded")
        modules = dict(self.model.named_modules())
        for name in weights:  # all checked before any layer is wrapped: a refusal changes nothing
            if name not in self.layers and not isinstance(modules.get(name), nn.Linear):
                raise ValueError(f"{name} is not a Linear layer of the base model")
        for name in weights:
            if name not in self.layers:
                self.layers[name] = self._wrap(name, modules[name])
        self.order.append(key)
        for name, layer in self.layers.items():
            a, b = weights.get(name, (None, None))
            layer.put(key, a, None if b is None else b * scales[name])
            layer.reindex(self.order)

    def remove(self, key: str) -> None:
        self.order.remove(key)
        for layer in self.layers.values():
            layer.drop(key)
            layer.reindex(self.order)

    def route(self, keys: list[str | None]) -> None:
        present = {k for k in keys if k is not None}
        self.idle = not present
        self.single = next(iter(present)) if len(present) == 1 and None not in keys else None
        if present and self.single is None:
            index = {k: i + 1 for i, k in enumerate(self.order)}
            device = next(self.model.parameters()).device
            self.rows = torch.tensor([0 if k is None else index[k] for k in keys], device=device)
        else:
            self.rows = None

    def _wrap(self, name: str, linear: nn.Linear) -> MultiLoraLinear:
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        wrapped = MultiLoraLinear(linear, self)
        setattr(parent, child, wrapped)
        return wrapped


class MultiLoraLinear(nn.Module):
    """A frozen nn.Linear plus the LoRA terms of every adapter loaded on it."""

    def __init__(self, base: nn.Linear, slots: LoraSlots):
        super().__init__()
        self.base = base
        self._slots = [slots]  # a list, so the module tree does not own (and recurse into) the slots
        self.parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (A [r, in], B*scale [out, r])
        self.a: torch.Tensor | None = None  # [R, in]
        self.b: torch.Tensor | None = None  # [out, R]
        self.spans: dict[str, tuple[int, int]] = {}
        self.table: torch.Tensor | None = None  # [1 + adapters, R]: row 0 (the base) all zeros
        # the matrices cast to autocast's dtype, kept: autocast would otherwise cast them at every step
        self._cast: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # weight and in/out features are read by code that inspects Linear layers (shape checks)
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def put(self, key: str, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        if a is not None:
            like = self.base.weight
            self.parts[key] = (a.to(like.device, like.dtype), b.to(like.device, like.dtype))

    def drop(self, key: str) -> None:
        self.parts.pop(key, None)

    def reindex(self, order: list[str]) -> None:
        self._cast = {}
        keys = [k for k in order if k in self.parts]
        if not keys:
            self.a = self.b = self.table = None
            self.spans = {}
            return
        self.a = torch.cat([self.parts[k][0] for k in keys]).contiguous()
        self.b = torch.cat([self.parts[k][1] for k in keys], dim=1).contiguous()
        self.spans, start = {}, 0
        for k in keys:
            end = start + self.parts[k][0].shape[0]
            self.spans[k] = (start, end)
            start = end
        table = torch.zeros(1 + len(order), start, dtype=self.base.weight.dtype, device=self.base.weight.device)
        for i, k in enumerate(order):
            if k in self.spans:
                table[i + 1, slice(*self.spans[k])] = 1.0
        self.table = table

    def _matrices(self, key: str | None, device_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of one adapter (`key`) or of all (None), in the dtype the forward runs in."""
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        found = self._cast.get((key, dtype))
        if found is None:
            a, b = (self.a, self.b) if key is None else self.parts[key]
            found = (a, b) if dtype is None else (a.to(dtype), b.to(dtype))
            self._cast[(key, dtype)] = found
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        slots = self._slots[0]
        if slots.idle or self.a is None:
            return y
        if slots.single is not None:
            if slots.single not in self.spans:
                return y
            a, b = self._matrices(slots.single, x.device.type)
            return y + nn.functional.linear(nn.functional.linear(x, a), b)
        a, b = self._matrices(None, x.device.type)
        h = nn.functional.linear(x, a)
        mask = self.table[slots.rows].to(h.dtype)
        h = h * mask.view(mask.shape[0], *([1] * (h.dim() - 2)), mask.shape[1])
        return y + nn.functional.linear(h, b)


def read_lora(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[dict, dict]:
    """A PEFT LoRA file's tensors as {module name: (A, B)} and {module name: scale}."""
    import re

    weights: dict[str, list] = {}
    for key, value in tensors.items():
        name, _, part = key.partition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise ValueError(f"unexpected tensor {key} (only plain LoRA A/B matrices are served)")
        slot = weights.setdefault(name.removeprefix("base_model.model."), [None, None])
        slot[0 if part == "A.weight" else 1] = value
    alpha, alphas = config.get("lora_alpha", 8), config.get("alpha_pattern") or {}
    out, scales = {}, {}
    for name, (a, b) in weights.items():
        if a is None or b is None:
            raise ValueError(f"{name} has only one of its two LoRA matrices")
        rank = a.shape[0]
        layer_alpha = next((v for pattern, v in alphas.items() if re.match(rf"(.*\.)?({pattern})$", name)), alpha)
        scales[name] = layer_alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        out[name] = (a, b)
    return out, scales
