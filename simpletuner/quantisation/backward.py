"""A lighter backward pass for torchao-quantised Linear layers of a frozen base.

torchao's weight-only linear (``Int8Tensor`` / ``Float8Tensor``, torchao 0.18)
computes ``mm(x, qdata.t().to(bf16)) * scale`` with ordinary autograd, so
every quantised layer the step passes through saves a bf16 copy of its whole
weight for the backward pass: a LoRA step on an int8-torchao base held the
base's weights twice (SDXL: 6.97 GiB against 3.51 GiB with quanto).  The base
is frozen, so backward needs the weight only to pass the gradient on to the
layer's input; quanto's layers already keep the quantised weight and
dequantise it in backward, one layer at a time.  ``FrozenQuantisedLinear``
does the same for torchao: the forward runs torchao's own kernel without
recording a graph, and backward multiplies by ``weight.dequantize()``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F


class _FrozenWeightLinear(torch.autograd.Function):
    """``F.linear`` whose weight gets no gradient and is kept quantised for backward."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        # The parameter itself (already held by the module), not a copy.
        ctx.save_for_backward(weight)
        ctx.input_shape = input.shape
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (weight,) = ctx.saved_tensors
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.matmul(_scaled_rows(grad, weight), _unscaled(weight, grad.dtype)).reshape(ctx.input_shape)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_input, None, grad_bias


def _per_row(weight: torch.Tensor) -> bool:
    """A weight of one scale per output row and no zero point (torchao's weight-only default)."""
    scale = getattr(weight, "scale", None)
    zero_point = getattr(weight, "zero_point", None)
    return (getattr(weight, "qdata", None) is not None and scale is not None and scale.numel() == weight.shape[0]
            and (zero_point is None or not bool(zero_point.any())))


def _scaled_rows(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # grad @ (diag(scale) @ qdata) == (grad * scale) @ qdata: the scale moves onto the
    # small gradient, so only a bf16 cast of qdata (2 bytes a weight) is ever made,
    # where dequantize() goes through fp32 temporaries (10 bytes a weight measured).
    if not _per_row(weight):
        return grad
    return (grad * weight.scale.reshape(-1).to(grad.dtype))


def _unscaled(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight as ``dtype``: the raw rows when the scale went onto the gradient, else dequantised."""
    if _per_row(weight):
        return weight.qdata.to(dtype)
    return weight.dequantize().to(dtype)


class FrozenQuantisedLinear(torch.nn.Linear):
    """A ``torch.nn.Linear`` holding a torchao weight, with the lighter backward.

    Still a ``torch.nn.Linear`` (PEFT, LyCORIS and diffusers see the layer they expect);
    only ``forward`` differs.  A weight that requires grad (never on a quantised base,
    the matrix refuses that) takes the ordinary path.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or not torch.is_grad_enabled():
            return super().forward(input)
        return _FrozenWeightLinear.apply(input, self.weight, self.bias)


def lighten_backward(layer: torch.nn.Module) -> None:
    """Give a torchao-quantised plain ``nn.Linear`` the lighter backward, in place."""
    if type(layer) is torch.nn.Linear:
        layer.__class__ = FrozenQuantisedLinear
