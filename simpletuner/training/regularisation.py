"""Regularisation data (``is_regularisation_data: true``) when training an adapter.

A regularisation sample teaches the adapter to leave the model alone: its
target is what the base model itself predicts for the same noisy input (the
adapter switched off, no gradient), instead of the noise, v or flow target.
Ordinary samples keep the usual target.  A full fine-tune keeps no base model
to ask, so there such datasets train as ordinary data, which the run says at
start-up.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import torch

logger = logging.getLogger(__name__)


def regularisation_mask(samples: Iterable[Any]) -> Optional[torch.Tensor]:
    """Which samples of the batch are regularisation data, or None when none are."""
    flags = [bool(getattr(sample, "is_regularisation", False)) for sample in samples]
    return torch.tensor(flags) if any(flags) else None


def mix_targets(mask: torch.Tensor, base_prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The base prediction for regularisation samples, ``target`` for the rest."""
    if bool(mask.all()):
        return base_prediction.to(target.dtype)
    select = mask.to(target.device).view(-1, *[1] * (target.dim() - 1))
    return torch.where(select, base_prediction.to(target.dtype), target)


def log_regularisation_plan(datasets: Iterable[Any], trainable: Any) -> None:
    """Say, once at start-up, how regularisation datasets will be trained."""
    names = [dataset.id for dataset in datasets if getattr(dataset, "is_regularisation_data", False)]
    if not names:
        return
    listed = ", ".join(names)
    if trainable.has_base_model:
        logger.info("regularisation dataset(s) %s: trained toward the base model's own prediction", listed)
    else:
        logger.warning(
            "regularisation dataset(s) %s: a full fine-tune has no frozen base model to compare against, "
            "so their samples train as ordinary data (prior preservation by example)", listed
        )
