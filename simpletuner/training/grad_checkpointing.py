"""Gradient checkpointing of the denoiser, optionally for only every n-th block.

diffusers models run each block (a UNet's resnets and transformer blocks, a
DiT's transformer blocks) through the model's ``_gradient_checkpointing_func``
once checkpointing is on.  ``--gradient_checkpointing_interval n`` hands the
model a function that checkpoints the first block call of each forward pass
and every n-th one after it, and runs the others normally: their activations
are kept, which costs memory but saves recomputing them in the backward pass.
Gradients are the same either way.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.utils.checkpoint

from simpletuner.errors import ModelError


class IntervalCheckpointing:
    """A ``_gradient_checkpointing_func`` that checkpoints every ``interval``-th call.

    The call count restarts at each forward pass of the model (a pre-hook calls
    :meth:`restart`), so the same blocks are checkpointed in every step.
    """

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1, got {interval}")
        self.interval = interval
        self.calls = 0

    def restart(self, *_: Any) -> None:
        self.calls = 0

    def __call__(self, block: Any, *args: Any, **kwargs: Any) -> Any:
        index = self.calls
        self.calls += 1
        if index % self.interval:
            return block(*args, **kwargs)
        # Looked up at call time (not imported by name) so a profiler or test
        # wrapping torch.utils.checkpoint.checkpoint sees these calls.
        return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(denoiser: torch.nn.Module, interval: Optional[int] = None) -> None:
    """Turn checkpointing on, for every block (``interval`` None or 1) or every n-th."""
    if not getattr(denoiser, "_supports_gradient_checkpointing", False):
        raise ModelError(
            f"--gradient_checkpointing: {type(denoiser).__name__} does not support gradient checkpointing"
        )
    if interval is None or interval == 1:
        denoiser.enable_gradient_checkpointing()
        return
    function = IntervalCheckpointing(interval)
    denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=function)
    denoiser.register_forward_pre_hook(function.restart)
