"""Building the optimizer named by ``--optimizer`` from a well-kept library.

Only the choices marked implemented in the option table reach this module;
validation rejects the rest before anything loads.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

DEFAULT_BETAS = (0.9, 0.999)


def _optimi_adamw(params: Iterable[torch.Tensor], config: Any) -> torch.optim.Optimizer:
    import optimi

    # torch-optimi's AdamW turns on Kahan summation by itself for bf16/fp16
    # parameters, which is what "adamw_bf16" promises: AdamW that stays
    # accurate when the trained weights are stored in bf16.
    return optimi.AdamW(
        params,
        lr=config.learning_rate,
        betas=betas_from(config),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        foreach=False,
    )


OPTIMIZERS: dict[str, Callable[[Iterable[torch.Tensor], Any], torch.optim.Optimizer]] = {
    "adamw_bf16": _optimi_adamw,
    "optimi-adamw": _optimi_adamw,
}


def betas_from(config: Any) -> tuple[float, float]:
    beta1 = config.optimizer_beta1 if config.optimizer_beta1 is not None else DEFAULT_BETAS[0]
    beta2 = config.optimizer_beta2 if config.optimizer_beta2 is not None else DEFAULT_BETAS[1]
    return (beta1, beta2)


def build_optimizer(params: Iterable[torch.Tensor], config: Any) -> torch.optim.Optimizer:
    return OPTIMIZERS[config.optimizer](list(params), config)
