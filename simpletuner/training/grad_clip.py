"""Gradient clipping as --grad_clip_method says, through accelerate.

accelerate unscales fp16 gradients (loss scaling) before either clip, and
its ``clip_grad_norm_`` reduces the norm across FSDP shards; going through
it keeps both right.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

GRAD_CLIP_METHODS = ("value", "norm")


def clip_gradients(
    accelerator: Any, parameters: Sequence[torch.nn.Parameter], method: str, limit: float
) -> Optional[torch.Tensor]:
    """Clip the gradients of ``parameters``; returns the total norm before clipping (``norm`` only).

    ``norm`` rescales all gradients together so their overall norm is at most
    ``limit``; ``value`` clamps each gradient element to ``[-limit, limit]``.
    A ``limit`` of 0 turns clipping off.
    """
    if limit <= 0:
        return None
    if method == "norm":
        norm = accelerator.clip_grad_norm_(parameters, limit)
        # Over FSDP2-sharded gradients the norm is a DTensor; the logged value is the whole model's.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if method == "value":
        accelerator.clip_grad_value_(parameters, limit)
        return None
    raise ValueError(f"unknown grad_clip_method {method!r}")
