"""Learning-rate schedules, from diffusers' ``get_scheduler``."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def effective_scheduler_name(config: Any) -> str:
    """``constant`` with warm-up steps means ``constant_with_warmup``.

    diffusers' plain constant schedule ignores warm-up; SimpleTuner users set
    both and expect a warm-up, so we switch and say so rather than drop it.
    """
    if config.lr_scheduler == "constant" and config.lr_warmup_steps > 0:
        logger.info(
            "lr_scheduler=constant with lr_warmup_steps=%d: using constant_with_warmup",
            config.lr_warmup_steps,
        )
        return "constant_with_warmup"
    return config.lr_scheduler


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: Any, total_steps: int) -> Any:
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        effective_scheduler_name(config),
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
