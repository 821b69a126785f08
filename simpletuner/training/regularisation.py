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

from simpletuner.errors import DataError

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


def check_something_to_learn(datasets: Iterable[Any], report: Any, trainable: Any) -> None:
    """Stop when only regularisation data would be trained on by an adapter.

    Its target is then always the base model's own prediction: the loss is
    zero from the first step and the adapter learns nothing.  ``report`` is
    the start-up table's count of batches each dataset gives per epoch.
    """
    if not trainable.has_base_model:
        return  # a full fine-tune trains regularisation data as ordinary data
    datasets = list(datasets)
    regularisation = [d.id for d in datasets if getattr(d, "is_regularisation_data", False)]
    subjects = [d.id for d in datasets if not getattr(d, "is_regularisation_data", False)]
    given = report.quota or report.batches
    if not regularisation or any(given.get(name) for name in subjects):
        return
    left_out = (f"dataset(s) {', '.join(repr(name) for name in subjects)} give no batch (see the table above)"
                if subjects else "no other dataset is enabled")
    raise DataError(
        f"nothing to learn: only regularisation data remains ({', '.join(repr(n) for n in regularisation)}), "
        f"whose target is the base model's own prediction, and {left_out}; fix the subject dataset "
        "(images, captions, batch size) or enable one"
    )


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
