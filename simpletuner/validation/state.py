"""Validation must not change training: everything it touches is put back exactly.

Random state (python, numpy, torch on every device), each module's train/eval
flag, and a schedule-free optimizer's mode.  Schedule-free optimizers validate
the averaged weights (``optimizer.eval()``), but switching back is a
floating-point interpolation that does not return the same bits, so the
trained parameters and their optimizer state are copied before and written
back after (on the CPU: the copy costs memory only while validating).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from simpletuner.training.optimizers import set_optimizer_mode


@contextmanager
def training_state_kept(denoiser: torch.nn.Module, optimizer: Any,
                        parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """Eval mode (and a schedule-free optimizer's averaged weights) inside; as before after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    modes = [(module, module.training) for module in denoiser.modules()]
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    schedule_free = callable(getattr(inner, "eval", None))
    saved = _copy_tensors(parameters, inner) if schedule_free else None
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            if schedule_free:
                set_optimizer_mode(optimizer, training=False)
            denoiser.eval()
            yield
        finally:
            if schedule_free:
                set_optimizer_mode(optimizer, training=True)
                _restore_tensors(saved)
            for module, mode in modes:
                module.training = mode
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _copy_tensors(parameters: list[torch.nn.Parameter], optimizer: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(live tensor, CPU copy) for each parameter and each tensor of its optimizer state."""
    pairs = []
    for parameter in parameters:
        pairs.append((parameter.data, parameter.detach().to("cpu", copy=True)))
        for value in optimizer.state.get(parameter, {}).values():
            if isinstance(value, torch.Tensor):
                pairs.append((value, value.detach().to("cpu", copy=True)))
    return pairs


def _restore_tensors(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for live, copy in pairs:
            live.copy_(copy)
