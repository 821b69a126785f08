"""What the denoiser is trained to do, for one batch of clean latents.

An objective draws noise and timesteps (from the trainer's generator, so a
resumed run repeats them), builds the noisy input, and says what the
prediction is compared with and how each sample is weighted.  A family picks
its objective (``ModelFamily.make_objective``); the trainer only calls
``noise``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from simpletuner.training.loss import min_snr_weights, noise_prediction_target


@dataclass
class NoisedBatch:
    noisy: torch.Tensor  # the denoiser's input
    timesteps: torch.Tensor  # what the denoiser is told the noise level is
    target: torch.Tensor  # what its prediction is compared with
    weights: Optional[torch.Tensor] = None  # per-sample loss weights


class DiffusionObjective:
    """DDPM-style training: epsilon, v or sample prediction on a discrete schedule."""

    def __init__(self, noise_scheduler: Any, config: Any) -> None:
        self.scheduler = noise_scheduler
        self.snr_gamma = config.snr_gamma

    def noise(self, latents: torch.Tensor, generator: torch.Generator) -> NoisedBatch:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        timesteps = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
        )
        weights = None
        if self.snr_gamma:
            weights = min_snr_weights(self.scheduler, timesteps, self.snr_gamma).to(latents.device)
        timesteps = timesteps.to(latents.device)
        return NoisedBatch(
            noisy=self.scheduler.add_noise(latents, noise, timesteps),
            timesteps=timesteps,
            target=noise_prediction_target(self.scheduler, latents, noise, timesteps),
            weights=weights,
        )
