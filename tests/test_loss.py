"""Training targets and loss weights agree with diffusers' scheduler math."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from simpletuner.training.loss import min_snr_weights, noise_prediction_target, weighted_mse


def _scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    )


def _tensors():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    noise = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 250, 600, 999])
    return latents, noise, timesteps


def test_epsilon_target_is_the_noise() -> None:
    latents, noise, timesteps = _tensors()
    assert torch.equal(noise_prediction_target(_scheduler("epsilon"), latents, noise, timesteps), noise)


def test_v_prediction_target_matches_the_velocity_definition() -> None:
    scheduler = _scheduler("v_prediction")
    latents, noise, timesteps = _tensors()
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    target = noise_prediction_target(scheduler, latents, noise, timesteps)
    assert torch.allclose(target, expected, atol=1e-6)
    # and a perfect v prediction recovers the clean latents from the noisy ones
    noisy = scheduler.add_noise(latents, noise, timesteps)
    recovered = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * target
    assert torch.allclose(recovered, latents, atol=1e-5)


def test_sample_target_is_the_clean_latents() -> None:
    latents, noise, timesteps = _tensors()
    assert torch.equal(noise_prediction_target(_scheduler("sample"), latents, noise, timesteps), latents)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_paper(prediction_type: str) -> None:
    scheduler = _scheduler(prediction_type)
    _, _, timesteps = _tensors()
    snr = compute_snr(scheduler, timesteps)
    weights = min_snr_weights(scheduler, timesteps, snr_gamma=5.0)
    denominator = snr + 1 if prediction_type == "v_prediction" else snr
    assert torch.allclose(weights, torch.minimum(snr, torch.full_like(snr, 5.0)) / denominator)
    # noisy timesteps (low SNR) keep weight ~1 for epsilon; clean ones are damped
    assert weights[-1] > weights[0]


def test_weighted_mse_weights_each_sample() -> None:
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert weighted_mse(prediction, target).item() == pytest.approx((1 + 4) / 2)
    assert weighted_mse(prediction, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
