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

    The paper weights the x0 loss by ``min(SNR, gamma)``; see
    :func:`x0_weight_for_prediction` for how that carries over to the loss
    of what the model predicts.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        # With zero terminal SNR (--rescale_betas_zero_snr) the last timestep
        # has SNR 0, where min(SNR, gamma) / SNR is 0/0; its limit there is 1.
        return torch.where(snr == 0, torch.ones_like(snr), clipped / snr)
    return x0_weight_for_prediction(clipped, snr, prediction_type)


def soft_min_snr_weights(
    noise_scheduler: Any, timesteps: torch.Tensor, sigma_data: float
) -> torch.Tensor:
    """Per-sample loss weights of soft-min-SNR (Crowson et al., 2024, "Scalable
    High-Resolution Pixel-Space Image Synthesis with Hourglass Diffusion
    Transformers", arXiv:2401.11605; k-diffusion's ``soft-min-snr``).

    k-diffusion weights its preconditioned loss by
    ``(sigma * sigma_data)^2 / (sigma^2 + sigma_data^2)^2``; its target there is
    the x0 error divided by ``c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)``,
    so on the x0 loss the weight is ``1 / (sigma^2 + sigma_data^2)``, a soft
    minimum of ``SNR = 1 / sigma^2`` and ``gamma = 1 / sigma_data^2``.  Here
    ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` is the noise level of the
    DDPM timestep in k-diffusion's (variance-exploding) terms.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    soft = 1 + sigma_data**2 * snr
    if prediction_type == "epsilon":
        # x0 weight / SNR, written so SNR 0 (zero terminal SNR) gives its limit 1.
        return 1 / soft
    return x0_weight_for_prediction(snr / soft, snr, prediction_type)


def x0_weight_for_prediction(x0_weight: torch.Tensor, snr: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The weight on the predicted quantity's loss that equals ``x0_weight`` on the x0 loss.

    An epsilon error e is an x0 error e / sqrt(SNR), so the epsilon loss is
    SNR times the x0 loss; a v error e is an x0 error sqrt(1 - alpha_bar) * e,
    so the v loss is 1 / (1 - alpha_bar) = SNR + 1 times it (Salimans & Ho,
    2022).  The weight is divided by that factor.
    """
    if prediction_type == "epsilon":
        return x0_weight / snr
    if prediction_type == "v_prediction":
        return x0_weight / (snr + 1)
    if prediction_type == "sample":
        return x0_weight
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean squared error in float32, optionally weighted per sample."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.mean()
