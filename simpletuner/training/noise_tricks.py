"""Changes to the drawn noise that every objective applies the same way.

**Offset noise** (``--noise_offset``, ``--noise_offset_probability``): Gaussian
noise has almost no energy at the lowest frequency, so a model trained on it
never learns to move an image's overall brightness and cannot make very dark
or very bright pictures.  Adding ``offset * n`` with ``n ~ N(0, 1)`` drawn
once per sample and channel (constant over height and width) gives it that
energy (N. Guttenberg, "Diffusion with Offset Noise", crosslabs.org, 2023).
Each sample receives it with the given probability.  The offset noise is the
noise of the whole step: the noisy input is built from it and the target
(epsilon, v or the flow velocity) is computed from it.

**Input perturbation** (``--input_perturbation``): the noisy input is built
from ``noise + gamma * xi`` (``xi ~ N(0, 1)``) while the target still uses
``noise``, so training sees inputs slightly off the forward process, as
sampling does after its own errors (Ning et al., 2023, "Input Perturbation
Reduces Exposure Bias in Diffusion Models", arXiv:2301.11706).

Extra random numbers are drawn from the step's generator *after* the noise
and timesteps, and only when an option is on, so runs without these options
draw exactly what they always did and a resumed run repeats every draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from simpletuner.config.options import OPTIONS_BY_NAME


def run_option(config: Any, name: str) -> Any:
    """The run's value of ``name``; a partial config (a test's) that lacks it means the default."""
    return getattr(config, name, OPTIONS_BY_NAME[name].default)


@dataclass(frozen=True)
class DrawnNoise:
    target_noise: torch.Tensor  # the noise the target is computed from
    input_noise: torch.Tensor  # the noise the noisy input is built from


@dataclass(frozen=True)
class NoiseTricks:
    offset: float = 0.0
    offset_probability: float = 0.25
    input_perturbation: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> "NoiseTricks":
        return cls(
            offset=run_option(config, "noise_offset"),
            offset_probability=run_option(config, "noise_offset_probability"),
            input_perturbation=run_option(config, "input_perturbation"),
        )

    def apply(self, noise: torch.Tensor, generator: torch.Generator) -> DrawnNoise:
        """Offset and perturb ``noise`` (drawn in float32 on the CPU, then moved like it)."""
        batch, channels = noise.shape[:2]
        if self.offset:
            constant_shape = (batch, channels) + (1,) * (noise.ndim - 2)
            per_channel = torch.randn(constant_shape, generator=generator)
            chosen = torch.rand(batch, generator=generator) < self.offset_probability
            offset = self.offset * per_channel * chosen.view(-1, *([1] * (noise.ndim - 1)))
            noise = noise + offset.to(noise.device, noise.dtype)
        input_noise = noise
        if self.input_perturbation:
            extra = torch.randn(noise.shape, generator=generator).to(noise.device, noise.dtype)
            input_noise = noise + self.input_perturbation * extra
        return DrawnNoise(target_noise=noise, input_noise=input_noise)
