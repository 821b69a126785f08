"""Training targets and loss weights agree with diffusers' scheduler math."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from simpletuner.training.loss import min_snr_weights, noise_prediction_target, soft_min_snr_weights, weighted_loss


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


def test_min_snr_weights_x0_loss_directly_for_sample_prediction() -> None:
    # The paper's weight on the x0 loss is min(SNR, gamma), with no conversion.
    scheduler = _scheduler("sample")
    _, _, timesteps = _tensors()
    snr = compute_snr(scheduler, timesteps)
    assert torch.allclose(min_snr_weights(scheduler, timesteps, 5.0), snr.clamp(max=5.0))


def _sigmas(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """k-diffusion's noise level of a DDPM timestep: sqrt((1 - alpha_bar) / alpha_bar)."""
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    return ((1 - alpha_bar) / alpha_bar).sqrt()


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_soft_min_snr_weights_match_the_formula(sigma_data: float) -> None:
    _, _, timesteps = _tensors()
    sigma = _sigmas(_scheduler("epsilon"), timesteps)
    x0_weight = 1 / (sigma**2 + sigma_data**2)
    expected = {
        "epsilon": sigma**2 / (sigma**2 + sigma_data**2),
        "v_prediction": sigma**2 / ((sigma**2 + sigma_data**2) * (1 + sigma**2)),
        "sample": x0_weight,
    }
    for prediction_type, formula in expected.items():
        weights = soft_min_snr_weights(_scheduler(prediction_type), timesteps, sigma_data)
        assert torch.allclose(weights.double(), formula, rtol=1e-5), prediction_type
    # a soft minimum of SNR and 1/sigma_data^2: below both, close to the smaller one at the ends
    snr = 1 / sigma**2
    gamma = 1 / sigma_data**2
    assert torch.all(x0_weight <= torch.minimum(snr, torch.full_like(snr, gamma)))
    # pytest 9.2's approx rejects 0-d tensors ("iteration over a 0-d tensor"): compare Python floats.
    assert x0_weight[0].item() == pytest.approx(gamma, rel=0.01)
    assert x0_weight[-1].item() == pytest.approx(snr[-1].item(), rel=0.01)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_soft_min_snr_loss_equals_k_diffusions_preconditioned_loss(prediction_type: str) -> None:
    """The weighted loss of what the model predicts equals k-diffusion's soft-min-SNR loss.

    k-diffusion compares the network output F with (x0 - c_skip x_sigma) / c_out,
    so its error is the x0 error over c_out, weighted by
    (sigma sigma_data)^2 / (sigma^2 + sigma_data^2)^2.
    """
    sigma_data = 0.8
    scheduler = _scheduler(prediction_type)
    latents, noise, timesteps = _tensors()
    latents, noise = latents.double(), noise.double()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = noise_prediction_target(scheduler, latents, noise, timesteps)
    prediction = target + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(5), dtype=target.dtype)
    alpha_bar = scheduler.alphas_cumprod[timesteps].double().view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        denoised = (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    elif prediction_type == "v_prediction":
        denoised = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction
    else:
        denoised = prediction
    sigma = _sigmas(scheduler, timesteps)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_weight = (sigma * sigma_data) ** 2 / (sigma**2 + sigma_data**2) ** 2
    k_diffusion = ((denoised - latents).pow(2).flatten(1).mean(1) / c_out**2 * c_weight).mean()
    ours = weighted_loss(prediction, target, soft_min_snr_weights(scheduler, timesteps, sigma_data))
    assert ours.item() == pytest.approx(k_diffusion.item(), rel=1e-4)


def test_soft_min_snr_weights_are_finite_at_zero_terminal_snr() -> None:
    timesteps = torch.tensor([0, 500, 999])
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, prediction_type=prediction_type)
        weights = soft_min_snr_weights(scheduler, timesteps, 1.0)
        assert torch.isfinite(weights).all(), prediction_type
    # epsilon at SNR 0: the x0 weight / SNR tends to 1 (pure noise, the noise is the input)
    assert soft_min_snr_weights(
        DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="epsilon"), torch.tensor([999]), 1.0
    ).item() == pytest.approx(1.0)


def test_weighted_loss_weights_each_sample() -> None:
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert weighted_loss(prediction, target).item() == pytest.approx((1 + 4) / 2)
    assert weighted_loss(prediction, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
