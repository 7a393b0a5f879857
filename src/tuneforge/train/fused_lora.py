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

With `int8=True` the frozen base product runs as an int8 GEMM (`torch._int_mm`): the
weight rounded once to int8 with a scale per output feature, the input (and, backward,
the incoming gradient) rounded per token. Where the CPU has no bf16 this is the fast
path (int8 products are about twice float32's rate with AVX2 alone); the adapter, its
gradients and optimizer state stay float32.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` rounded to int8 row by row, and each row's scale."""
    scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-12) / 127
    return torch.round(x / scale).clamp_(-127, 127).to(torch.int8), scale


class Int8Weight:
    """A frozen [out, in] weight in int8, one scale per output feature, in the two layouts
    its products read: x @ W.T forward, grad @ W backward."""

    def __init__(self, weight: torch.Tensor):
        q, scale = _int8_rows(weight.detach().float())  # a row of W is one output feature
        self.scale = scale[:, 0]
        self.q, self.q_t = q, q.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = _int8_rows(x)
        return torch._int_mm(xq, self.q_t).float().mul_(sx).mul_(self.scale)

    def input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        # the weight's scales run along grad's columns, so they go in before rounding
        gq, sg = _int8_rows(grad * self.scale)
        return torch._int_mm(gq, self.q).float().mul_(sg)


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


def fuse_lora(model, int8: bool = False) -> int:
    """Route every plain PEFT LoRA linear layer of `model` through the fused function
    (with its frozen base weight in int8 if asked); returns how many layers were switched."""
    from peft.tuners.lora import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, nn.Linear):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fast_forward, module)
            module._int8 = Int8Weight(module.base_layer.weight) if int8 else None
            switched += 1
    return switched
