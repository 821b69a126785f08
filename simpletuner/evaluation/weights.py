"""The weights an evaluation measures: with a schedule-free optimizer, its averaged ones.

A schedule-free optimizer trains on one weight sequence and saves another
(the average; ``optimizer.eval()`` swaps it in).  The evaluation measures the
saved one.  Swapping back with ``optimizer.train()`` is a floating-point
interpolation that need not return the very same bits, so the trained
parameters (and the Kahan variant's rounding errors of them, ``y_error``)
are copied aside first and put back exactly afterwards: an evaluation never
changes what training does next.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from simpletuner.training.optimizers import set_optimizer_mode


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it


def has_averaged_weights(optimizer: Any) -> bool:
    inner = _inner(optimizer)
    return callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None))


@contextmanager
def averaged_weights(optimizer: Any, parameters: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside: the weights to evaluate; after: the training weights, bit for bit."""
    if not has_averaged_weights(optimizer):
        yield
        return
    state = _inner(optimizer).state
    kept = [(p, p.detach().clone()) for p in parameters]
    kept += [(state[p]["y_error"], state[p]["y_error"].clone()) for p in parameters
             if p in state and "y_error" in state[p]]
    set_optimizer_mode(optimizer, training=False)
    try:
        yield
    finally:
        set_optimizer_mode(optimizer, training=True)
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)
