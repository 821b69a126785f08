"""Learning-rate schedules, built on diffusers' schedule functions."""

from __future__ import annotations

import logging
from typing import Any

from simpletuner.training.optimizers import is_schedule_free

logger = logging.getLogger(__name__)


def effective_scheduler_name(config: Any) -> str:
    """The schedule actually used, with the two adjustments users expect.

    * ``constant`` with warm-up steps means ``constant_with_warmup``: diffusers'
      plain constant schedule ignores warm-up, and dropping it silently would
      surprise SimpleTuner users.
    * Schedule-free optimizers replace the schedule; they run at a constant
      rate and do their own warm-up (validation rejects other schedules).
    """
    if is_schedule_free(config.optimizer):
        return "constant"
    if config.lr_scheduler == "constant" and config.lr_warmup_steps > 0:
        logger.info(
            "lr_scheduler=constant with lr_warmup_steps=%d: using constant_with_warmup",
            config.lr_warmup_steps,
        )
        return "constant_with_warmup"
    return config.lr_scheduler


def scaled_learning_rate(config: Any, num_processes: int) -> float:
    """--lr_scale multiplies the rate by the effective batch size, as SimpleTuner does."""
    if not config.lr_scale:
        return config.learning_rate
    return config.learning_rate * config.train_batch_size * config.gradient_accumulation_steps * num_processes


def build_lr_scheduler(optimizer: Any, config: Any, total_steps: int) -> Any:
    from diffusers.optimization import get_polynomial_decay_schedule_with_warmup, get_scheduler

    name = effective_scheduler_name(config)
    warmup = 0 if is_schedule_free(config.optimizer) else config.lr_warmup_steps
    if name == "polynomial":
        # get_scheduler() cannot pass lr_end, which SimpleTuner users set.
        return get_polynomial_decay_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
            lr_end=config.lr_end, power=config.lr_power,
        )
    return get_scheduler(
        name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
        num_cycles=config.lr_num_cycles,
    )
