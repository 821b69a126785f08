"""What a training step keeps for the backward pass, traced on the meta device.

The run's denoiser (built on the meta device, see ``skeleton``) runs one
forward pass on meta tensors of the batch's shapes; every tensor autograd
saves for backward passes through a ``saved_tensors_hooks`` pack hook and is
counted once (parameters are weights, counted elsewhere).  Nothing is
computed, so a 12 B-parameter transformer at 1024 px traces in seconds.

Two corrections make the trace match real kernels:
- On the meta device PyTorch takes the "math" attention path, which keeps
  the full L x S attention matrix; the fused kernels runs use (flash on CPU,
  flash / memory-efficient on CUDA) keep only q, k, v, the output and a
  log-sum-exp per row.  A ``TorchFunctionMode`` routes attention through a
  function that saves exactly those.
- With gradient checkpointing, a checkpointed block keeps only its inputs
  and recomputes its activations during backward, one block at a time.
  The model's own ``_gradient_checkpointing_func`` (the hook diffusers calls
  for each block) is replaced by a recorder that measures each block's
  saved bytes and inputs, so the same trace gives both figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from simpletuner.families.base import ModelFamily


@dataclass(frozen=True)
class ActivationEstimate:
    without_checkpointing: int
    with_checkpointing: int  # at the run's --gradient_checkpointing_interval


class _FlashLikeAttention(torch.autograd.Function):
    """Attention with the outputs and saved tensors of a fused kernel (shapes only)."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # Laid out (batch, tokens, heads, dim) as flash kernels write it, so the
        # usual transpose back to (batch, tokens, heads x dim) is a view, not a copy.
        *batch, heads, tokens, _ = query.shape
        out = query.new_empty(*batch, tokens, heads, value.shape[-1]).transpose(-3, -2)
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # never run: the trace has no backward
        raise NotImplementedError


class _FusedAttention(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if func is F.scaled_dot_product_attention:
            named = dict(zip(("query", "key", "value"), args), **(kwargs or {}))
            return _FlashLikeAttention.apply(named["query"], named["key"], named["value"])
        return func(*args, **(kwargs or {}))


@dataclass
class _SavedBytes:
    """Counts the memory of what autograd saves, leaving out parameters.

    A saved tensor keeps its whole storage alive, so each storage counts once
    and in full: a slice or chunk holds the rest of the tensor it was cut
    from.  Under --fused_qkv_projections q, k and v are chunks of one
    projection output, and a saved q (a norm's input) keeps v's rows too.
    """

    parameter_ids: set
    total: int = 0
    seen: set = field(default_factory=set)
    held: list = field(default_factory=list)  # keeps storage keys unique while tracing

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) in self.parameter_ids or id(base) in self.parameter_ids:
            return tensor
        storage = tensor.untyped_storage()
        if storage._cdata in self.seen:
            return tensor
        self.seen.add(storage._cdata)
        self.held.append(tensor)
        self.total += storage.nbytes()
        return tensor


class _BlockRecorder:
    """Stands in for diffusers' ``_gradient_checkpointing_func``: runs each block
    plainly and records what it saved and what it was given, for the blocks the
    run would checkpoint (every ``interval``-th call)."""

    def __init__(self, saved: _SavedBytes, interval: int) -> None:
        self.saved = saved
        self.interval = interval
        self.calls = 0
        self.blocks: list[tuple[int, int]] = []  # (saved bytes, input bytes)

    def __call__(self, block: Any, *args: Any, **kwargs: Any) -> Any:
        checkpointed = self.calls % self.interval == 0
        self.calls += 1
        before = self.saved.total
        output = block(*args, **kwargs)
        if checkpointed:
            inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            self.blocks.append((self.saved.total - before, sum(t.numel() * t.element_size() for t in inputs)))
        return output


def trace_activations(
    family: ModelFamily, denoiser: torch.nn.Module, batch_size: int, latent_shape: tuple[int, int, int],
    dtype: torch.dtype, checkpointing_interval: int = 1,
) -> ActivationEstimate:
    """Bytes kept for backward by one step on latents of ``latent_shape`` (channels, height,
    width), with and without checkpointing."""
    saved = _SavedBytes(parameter_ids={id(p) for p in denoiser.parameters()})
    recorder = _BlockRecorder(saved, checkpointing_interval)
    supports = getattr(denoiser, "_supports_gradient_checkpointing", False)
    if supports:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=recorder)
    denoiser.train()
    with torch.device("meta"):
        noisy = torch.zeros(batch_size, *latent_shape, dtype=dtype)
        timesteps = torch.full((batch_size,), 500.0)
        batch = {k: v.to(dtype) if v.is_floating_point() else v
                 for k, v in family.example_text_batch(denoiser.config, batch_size).items()}
        inputs = family.model_inputs(batch, noisy, timesteps)
        with _FusedAttention(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            denoiser(**inputs)
    if supports:
        denoiser.disable_gradient_checkpointing()
    full = saved.total
    if not recorder.blocks:
        return ActivationEstimate(full, full)
    inside = sum(s for s, _ in recorder.blocks)
    kept_inputs = sum(i for _, i in recorder.blocks)
    # Outside the blocks as before, each block's inputs, and one block recomputed at a time.
    checkpointed = full - inside + kept_inputs + max(s for s, _ in recorder.blocks)
    return ActivationEstimate(full, checkpointed)
