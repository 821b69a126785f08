"""Sampling some DDPM timesteps more often than others (``--timestep_bias_*``).

Every timestep starts with weight 1; the favoured ones are multiplied by
``--timestep_bias_multiplier`` and the vector is normalised into a
probability distribution that timesteps are drawn from:

- ``earlier``: the first ``portion`` of the schedule (low timestep numbers,
  little noise: fine detail);
- ``later``: the last ``portion`` (high timestep numbers, heavy noise:
  composition and colour);
- ``range``: timesteps ``begin`` up to, but not including, ``end``.

The number of favoured timesteps for ``earlier``/``later`` is
``round(portion * num_timesteps)``, at least one, so a small portion never
silently favours nothing.  A multiplier of 0 leaves the favoured timesteps
out of training altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from simpletuner.errors import ConfigError
from simpletuner.training.noise_tricks import run_option

STRATEGIES = ("none", "earlier", "later", "range")


@dataclass(frozen=True)
class TimestepBias:
    strategy: str = "none"
    multiplier: float = 1.0
    begin: int = 0
    end: int = 1000
    portion: float = 0.25

    @classmethod
    def from_config(cls, config: Any) -> "TimestepBias":
        return cls(
            strategy=run_option(config, "timestep_bias_strategy"),
            multiplier=run_option(config, "timestep_bias_multiplier"),
            begin=run_option(config, "timestep_bias_begin"),
            end=run_option(config, "timestep_bias_end"),
            portion=run_option(config, "timestep_bias_portion"),
        )

    @property
    def active(self) -> bool:
        return self.strategy != "none"

    def favoured(self, num_timesteps: int) -> slice:
        """The timesteps the strategy favours, as a slice of ``range(num_timesteps)``."""
        if self.strategy == "range":
            if self.end > num_timesteps:
                raise ConfigError(
                    f"--timestep_bias_end={self.end} is past this model's {num_timesteps} training "
                    f"timesteps; set it to at most {num_timesteps}"
                )
            return slice(self.begin, self.end)
        count = max(1, round(self.portion * num_timesteps))
        if self.strategy == "earlier":
            return slice(0, count)
        if self.strategy == "later":
            return slice(num_timesteps - count, num_timesteps)
        raise ValueError(f"no favoured timesteps for strategy {self.strategy!r}")

    def weights(self, num_timesteps: int) -> torch.Tensor:
        """Probability of drawing each timestep (sums to 1)."""
        weights = torch.ones(num_timesteps, dtype=torch.float64)
        if self.active:
            weights[self.favoured(num_timesteps)] *= self.multiplier
        if weights.sum() == 0:
            raise ConfigError(
                "--timestep_bias_multiplier=0 over every timestep leaves none to train on; "
                "narrow the favoured span or raise the multiplier"
            )
        if self.active and bool((weights == weights[0]).all()):
            raise ConfigError(
                f"--timestep_bias_strategy={self.strategy} favours all {num_timesteps} training timesteps, "
                "which changes nothing; narrow the favoured span"
            )
        return weights / weights.sum()


def windowed_weights(bias: TimestepBias, num_timesteps: int, window: Optional[slice]) -> Optional[torch.Tensor]:
    """The draw's weights: the bias's, with every timestep outside ``window`` at zero.

    None (the plain uniform draw) when nothing is biased or restricted.  A
    window is how a two-stage model keeps to its part of the schedule
    (families/sdxl_stages.py).
    """
    if window is None:
        return bias.weights(num_timesteps) if bias.active else None
    weights = bias.weights(num_timesteps) if bias.active else torch.ones(num_timesteps, dtype=torch.float64)
    weights = weights.clone()
    weights[: window.start] = 0
    weights[window.stop :] = 0
    if weights.sum() == 0:
        raise ConfigError(
            f"--timestep_bias_strategy={bias.strategy} leaves no timestep inside this stage's "
            f"{window.start}..{window.stop - 1}; change the bias or --refiner_training_strength"
        )
    return weights / weights.sum()


def sample_timesteps(
    num_timesteps: int, batch_size: int, generator: torch.Generator, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``batch_size`` timesteps drawn from ``generator``: uniformly, or in proportion to ``weights``.

    Without weights this is the plain ``randint`` draw, so runs that do not
    bias timesteps draw exactly the numbers they always did.
    """
    if weights is None:
        return torch.randint(0, num_timesteps, (batch_size,), generator=generator)
    return torch.multinomial(weights, batch_size, replacement=True, generator=generator)
