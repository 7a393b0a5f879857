"""A fused forward/backward for PEFT LoRA linear layers during training.

PEFT computes `base(x) + B(A(dropout(x))) * scaling` as separate ops: it casts the
input to the adapter's float32 dtype (autocast then casts it back), scales the full
output, and adds it, forward and backward. On a CPU those memory-bound element-wise
passes over [tokens, features] cost as much as the matrix products. Here one autograd
function does the same maths with the scale folded into B (a tiny matrix) and the
adapter product accumulated into the base output in place (addmm), in the compute
dtype. The parameters are PEFT's own, so checkpoints and the saved adapter are
unchanged; anything unusual (dropout, DoRA, several adapters, merged or disabled
adapters) falls back to PEFT's forward.

`quantize_base` then runs each fused layer's frozen base product as an int8 GEMM
(`torch._int_mm`): the weight rounded once to int8 with a scale per output feature, the
input (and, backward, the incoming gradient) rounded per token. Where the CPU has no bf16
this is the fast path (int8 products are about twice float32's rate with AVX2 alone); the
adapter, its gradients and optimizer state stay float32. A few input channels of these
layers carry values far above the rest, which would make per-token rounding coarse for
every other channel, so each layer is first smoothed as SmoothQuant does (Xiao et al.,
2022): x @ W.T = (x / s) @ (W * s).T, with s per input channel from the input ranges seen
on sample data and the weight's. That moves half of the range (in log scale) from the
input to the weight, where the per-output-feature scales absorb it. Without it, the
training benchmark's test loss was 15% above float32's (0.0853 vs 0.0741); with it, 2% and
13% above on two seeds (float32's own two differ by 13%). benchmarks/int8_error.py
measures both roundings against float32.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn as nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _int8_rows(x: torch.Tensor, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` rounded to int8 row by row, and each row's scale. `scratch`: `x` is a temporary
    that may be divided in place (at a step's sizes a pass costs about as much as its dispatch)."""
    scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-12).div_(127)
    # |x| / scale <= 127 by construction, so no clamp before the cast
    return (x.div_(scale) if scratch else x / scale).round_().to(torch.int8), scale


class Int8Weight:
    """A frozen [out, in] weight in int8 with one scale per output feature, once for each
    product: x @ W.T forward (smoothed by `input_range`, max |x| per input channel on sample
    inputs; without it not smoothed) and grad @ W backward (not smoothed: the incoming
    gradient has no such channels, and smoothing would coarsen the weight's rounding).
    Each product reads its weight column-major (a transposed view), which int8 GEMMs run
    1.1-1.4x faster than row-major at these shapes (benchmarks/int8_gemm.py)."""

    def __init__(self, weight: torch.Tensor, input_range: torch.Tensor | None = None):
        weight = weight.detach().float()
        q, scale = _int8_rows(weight)  # a row of W is one output feature
        self.grad_scale, self.q_t = scale[:, 0], q.t().contiguous()
        self.smooth = None
        if input_range is not None:
            # s = sqrt(max|x| / max|W|) per input channel: both sides end up with the same range
            s = (input_range.float().clamp(min=1e-5) / weight.abs().amax(0).clamp(min=1e-5)).sqrt_()
            q, scale = _int8_rows(weight * s)
            self.smooth = 1 / s
        self.scale, self.q = scale[:, 0], q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = _int8_rows(x) if self.smooth is None else _int8_rows(x * self.smooth, scratch=True)
        return torch._int_mm(xq, self.q.t()).float().mul_(sx).mul_(self.scale)

    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        # the weight's scales run along grad's columns, so they go in before rounding
        gq, sg = _int8_rows(grad * self.grad_scale, scratch=True)
        return torch._int_mm(gq, self.q_t.t()).float().mul_(sg)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scale: float, int8: Int8Weight | None):
        dtype = _compute_dtype(x) if int8 is None else torch.float32
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, shape[-1]).to(dtype)
            w = weight.to(dtype) if int8 is None else weight
            a_c, b_c = a.to(dtype), (b * scale).to(dtype)
            xa = x2 @ a_c.t()
            if int8 is not None:
                y = int8.forward(x2) if bias is None else int8.forward(x2).add_(bias)
            else:
                y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(xa, b_c.t())
        ctx.save_for_backward(x2, w, a_c, b_c, xa)
        ctx.scale, ctx.shape, ctx.x_dtype, ctx.int8 = scale, shape, x.dtype, int8
        ctx.param_dtypes = (a.dtype, b.dtype)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, w, a_c, b_c, xa = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)
            gb = g @ b_c
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ w if ctx.int8 is None else ctx.int8.input_grad(g)).addmm_(gb, a_c)
            grad_a = (gb.t() @ x2).to(ctx.param_dtypes[0])
            grad_b = ((g.t() @ xa) * ctx.scale).to(ctx.param_dtypes[1])
        if grad_x is not None:
            grad_x = grad_x.reshape(ctx.shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None


def _fast_forward(self, x: torch.Tensor, *args, **kwargs):
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] not in self.lora_A or active[0] in getattr(self, "lora_variant", {})
            or not isinstance(self.lora_dropout[active[0]], nn.Identity)
            or self.base_layer.weight.requires_grad or getattr(self, "fan_in_fan_out", False)):
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    base = self.base_layer
    return _LoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                             float(self.scaling[name]), self._int8)


def fuse_lora(model) -> int:
    """Route every plain PEFT LoRA linear layer of `model` through the fused function;
    returns how many layers were switched."""
    from peft.tuners.lora import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, nn.Linear):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fast_forward, module)
            module._int8 = None
            switched += 1
    return switched


@torch.no_grad()
def quantize_base(model, run_samples: Callable[[], object]) -> int:
    """Put the frozen base of every fused layer in int8, smoothed by the input ranges each
    layer sees while `run_samples()` runs the model (in float32: call it before training,
    while the adapters still add nothing, so the result depends on the base and the
    samples only and a resumed run rebuilds the same base). Returns the layers quantized."""
    layers = [m for m in model.modules() if hasattr(m, "_int8")]
    ranges: dict[nn.Module, torch.Tensor] = {}

    def record(module, args):
        seen = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()
        ranges[module] = seen if module not in ranges else torch.maximum(ranges[module], seen)

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        run_samples()
    finally:
        for hook in hooks:
            hook.remove()
    for m in layers:
        m._int8 = Int8Weight(m.base_layer.weight, ranges.get(m))
    return len(layers)
