"""Loss math: training targets and per-sample weights, as small pure functions.

The formulas follow diffusers' schedulers (``DDPMScheduler.add_noise`` and
``get_velocity``) and ``diffusers.training_utils.compute_snr``; tests compare
against those directly.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

# --loss_type choices: the squared error, and the two pseudo-Huber losses of
# "Improving Diffusion Models's Data-Corruption Resistance using Scheduled
# Pseudo-Huber Loss" (Khrapov et al., 2024, arXiv:2403.16728), as diffusers'
# training scripts and SimpleTuner compute them.
LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")


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


def scheduled_huber_c(
    schedule: str, huber_c: float, timesteps: torch.Tensor, num_train_timesteps: int, noise_ratio: torch.Tensor
) -> torch.Tensor:
    """Per-sample Huber ``c`` of the scheduled pseudo-Huber loss (Khrapov et al., 2024).

    ``constant`` keeps ``huber_c``; ``exponential`` falls from 1 at timestep 0
    to ``huber_c`` at the last timestep (``huber_c ** (t / T)``); ``snr``
    is ``(1 - huber_c) / (1 + sigma)^2 + huber_c`` with ``sigma`` the
    noise-to-signal ratio (``noise_ratio``), near 1 for clean inputs and
    ``huber_c`` for noisy ones.  Noisy steps thus get the robust, L1-like
    loss and clean ones the L2-like loss, as diffusers' scripts schedule it.
    """
    timesteps = timesteps.float()
    if schedule == "constant":
        return torch.full_like(timesteps, huber_c)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / num_train_timesteps
        return torch.exp(-alpha * timesteps)
    if schedule == "snr":
        return (1 - huber_c) / (1 + noise_ratio.float()) ** 2 + huber_c
    raise ValueError(f"unknown huber schedule {schedule!r}")


def per_sample_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", huber_c: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Each sample's mean elementwise loss, in float32.

    ``huber`` is ``2 c (sqrt(e^2 + c^2) - c)`` and ``smooth_l1`` is
    ``2 (sqrt(e^2 + c^2) - c)`` for the error ``e`` (diffusers'
    ``conditional_loss``): both are ``e^2`` near 0 scaled by ``1/c`` or not,
    and grow linearly beyond ``|e| ~ c``.
    """
    error = prediction.float() - target.float()
    if loss_type == "l2":
        elementwise = error.pow(2)
    elif loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs per-sample huber_c")
        c = huber_c.float().to(error.device).view(-1, *([1] * (error.ndim - 1)))
        smooth = torch.sqrt(error.pow(2) + c.pow(2)) - c
        elementwise = 2 * c * smooth if loss_type == "huber" else 2 * smooth
    else:
        raise ValueError(f"unknown loss type {loss_type!r}")
    return elementwise.flatten(1).mean(dim=1)


def weighted_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    loss_type: str = "l2",
    huber_c: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The batch loss the trainer minimises: per-sample loss times weight, averaged."""
    per_sample = per_sample_loss(prediction, target, loss_type, huber_c)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.mean()
