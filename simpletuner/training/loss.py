"""Loss math: training targets and per-sample weights, as small pure functions.

The formulas follow diffusers' schedulers (``DDPMScheduler.add_noise`` and
``get_velocity``) and ``diffusers.training_utils.compute_snr``; tests compare
against those directly.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def noise_prediction_target(
    noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What a DDPM-style denoiser is trained to output, per its prediction type."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        # v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0 (Salimans & Ho, 2022)
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def min_snr_weights(
    noise_scheduler: Any, timesteps: torch.Tensor, snr_gamma: float
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al., 2023, arXiv:2303.09556).

    For epsilon prediction the weight is min(SNR, gamma) / SNR; for
    v-prediction it is min(SNR, gamma) / (SNR + 1), because the v loss already
    carries a factor of (SNR + 1) relative to the x0 loss.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    divisor = snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr
    # With zero terminal SNR (--rescale_betas_zero_snr) the last timestep has
    # SNR 0, where min(SNR, gamma) / SNR is 0/0; its limit there is 1.
    return torch.where(divisor == 0, torch.ones_like(snr), clipped / divisor)


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean squared error in float32, optionally weighted per sample."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.mean()
