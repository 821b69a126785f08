"""What the denoiser is trained to do, for one batch of clean latents.

An objective draws noise and timesteps (from the trainer's generator, so a
resumed run repeats them), builds the noisy input, and says what the
prediction is compared with and how each sample is weighted.  A family picks
its objective (``ModelFamily.make_objective``); the trainer only calls
``noise``, and the held-out evaluation ``noised_at`` (given noise and
schedule positions, nothing drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from simpletuner.training.loss import (
    min_snr_weights,
    noise_prediction_target,
    scheduled_huber_c,
    soft_min_snr_weights,
)
from simpletuner.training.noise_tricks import NoiseTricks, run_option
from simpletuner.training.timestep_bias import TimestepBias, sample_timesteps, windowed_weights


@dataclass
class NoisedBatch:
    noisy: torch.Tensor  # the denoiser's input
    timesteps: torch.Tensor  # what the denoiser is told the noise level is
    target: torch.Tensor  # what its prediction is compared with
    weights: Optional[torch.Tensor] = None  # per-sample loss weights
    huber_c: Optional[torch.Tensor] = None  # per-sample c of a Huber --loss_type; None for l2


@dataclass(frozen=True)
class LossShape:
    """--loss_type with its Huber schedule, and --snr_weight, as an objective applies them."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    snr_weight: float = 1.0

    @classmethod
    def from_config(cls, config: Any) -> "LossShape":
        return cls(*(run_option(config, name) for name in ("loss_type", "huber_schedule", "huber_c", "snr_weight")))

    def c(self, timesteps: torch.Tensor, num_train_timesteps: int, noise_ratio: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample Huber c for these draws; None for the squared error."""
        if self.loss_type == "l2":
            return None
        return scheduled_huber_c(self.huber_schedule, self.huber_c, timesteps, num_train_timesteps, noise_ratio)

    def scaled(self, weights: Optional[torch.Tensor], batch_size: int) -> Optional[torch.Tensor]:
        """``weights`` times --snr_weight (SimpleTuner v1 scaled the loss by it)."""
        if self.snr_weight == 1:
            return weights
        if weights is None:
            return torch.full((batch_size,), float(self.snr_weight))
        return weights * self.snr_weight


class DiffusionObjective:
    """DDPM-style training: epsilon, v or sample prediction on a discrete schedule."""

    def __init__(self, noise_scheduler: Any, config: Any, timestep_window: Optional[slice] = None) -> None:
        """``timestep_window``: the only timesteps trained (a two-stage model's part of the schedule)."""
        self.scheduler = noise_scheduler
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        self.snr_gamma = run_option(config, "snr_gamma")
        self.soft_min_snr_sigma_data = (
            run_option(config, "soft_min_snr_sigma_data") if run_option(config, "use_soft_min_snr") else None
        )
        self.tricks = NoiseTricks.from_config(config)
        self.shape = LossShape.from_config(config)
        bias = TimestepBias.from_config(config)
        # Built once, so a range past the schedule fails before the first step.
        self.timestep_weights = windowed_weights(bias, self.num_train_timesteps, timestep_window)
        self.window = timestep_window or slice(0, self.num_train_timesteps)

    def loss_weights(self, timesteps: torch.Tensor) -> Optional[torch.Tensor]:
        if self.soft_min_snr_sigma_data is not None:
            return soft_min_snr_weights(self.scheduler, timesteps, self.soft_min_snr_sigma_data)
        if self.snr_gamma:
            return min_snr_weights(self.scheduler, timesteps, self.snr_gamma)
        # --snr_weight scales the loss only where no SNR weighting replaces it, as in SimpleTuner v1.
        return self.shape.scaled(None, len(timesteps))

    def noise_ratio(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma = sqrt((1 - alpha_bar) / alpha_bar), the noise-to-signal ratio of each timestep."""
        alpha_bar = self.scheduler.alphas_cumprod[timesteps.cpu()].float()
        return ((1 - alpha_bar) / alpha_bar).sqrt()

    @property
    def loss_type(self) -> str:
        return self.shape.loss_type

    def noise(self, latents: torch.Tensor, generator: torch.Generator) -> NoisedBatch:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        timesteps = sample_timesteps(self.num_train_timesteps, latents.shape[0], generator, self.timestep_weights)
        drawn = self.tricks.apply(noise, generator)
        weights = self.loss_weights(timesteps)
        huber_c = self.shape.c(timesteps, self.num_train_timesteps, self.noise_ratio(timesteps))
        timesteps = timesteps.to(latents.device)
        return NoisedBatch(
            noisy=self.scheduler.add_noise(latents, drawn.input_noise, timesteps),
            timesteps=timesteps,
            target=noise_prediction_target(self.scheduler, latents, drawn.target_noise, timesteps),
            weights=None if weights is None else weights.to(latents.device),
            huber_c=None if huber_c is None else huber_c.to(latents.device),
        )

    def noised_at(self, latents: torch.Tensor, noise: torch.Tensor, positions: torch.Tensor) -> NoisedBatch:
        """The batch at given noise and schedule positions in [0, 1) (timestep ``position x T``,
        or of the trained window's width from its start when only part of the schedule trains).

        Nothing is drawn and no noise trick applies: the evaluation loss is
        measured at fixed points, with the training loss's target and weights.
        """
        width = self.window.stop - self.window.start
        timesteps = (self.window.start + (positions.double() * width).long()).clamp(self.window.start,
                                                                                    self.window.stop - 1)
        weights = self.loss_weights(timesteps)
        huber_c = self.shape.c(timesteps, self.num_train_timesteps, self.noise_ratio(timesteps))
        timesteps = timesteps.to(latents.device)
        noise = noise.to(latents.device, latents.dtype)
        return NoisedBatch(
            noisy=self.scheduler.add_noise(latents, noise, timesteps),
            timesteps=timesteps,
            target=noise_prediction_target(self.scheduler, latents, noise, timesteps),
            weights=None if weights is None else weights.to(latents.device),
            huber_c=None if huber_c is None else huber_c.to(latents.device),
        )
