"""Flow-matching math against diffusers' own scheduler and training helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from simpletuner.training.flow_matching import (
    FlowMatchingObjective,
    flow_noisy,
    resolution_shift,
    resolution_shift_mu,
    shift_sigmas,
)

SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")


def flow_config(**overrides) -> SimpleNamespace:
    values = dict(
        flow_weighting_scheme="none", flow_logit_mean=0.0, flow_logit_std=1.0, flow_mode_scale=1.29,
        flow_shift=1.0, flow_resolution_shifting=False, flow_base_seq_len=256, flow_max_seq_len=4096,
        flow_base_shift=0.5, flow_max_shift=1.15,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def objective(**overrides) -> FlowMatchingObjective:
    return FlowMatchingObjective(FlowMatchEulerDiscreteScheduler(shift=1.0), flow_config(**overrides))


def latents() -> torch.Tensor:
    return torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))


def replay(seed: int, shape: torch.Size, config: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and (unshifted) sigmas the objective drew, drawn again in its order."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    sigmas = compute_density_for_timestep_sampling(
        config.flow_weighting_scheme, shape[0], config.flow_logit_mean, config.flow_logit_std,
        config.flow_mode_scale, generator=generator,
    )
    return noise, sigmas


@pytest.mark.parametrize("scheme", SCHEMES)
def test_target_input_timesteps_and_weights_match_diffusers(scheme: str) -> None:
    flow = objective(flow_weighting_scheme=scheme)
    x0 = latents()
    noised = flow.noise(x0, torch.Generator().manual_seed(1))
    noise, sigmas = replay(1, x0.shape, flow.config)

    assert torch.equal(noised.target, noise - x0)
    assert torch.allclose(noised.timesteps, sigmas * 1000)
    assert torch.allclose(noised.weights, compute_loss_weighting_for_sd3(scheme, sigmas))
    # The noisy input is the scheduler's own forward process at those sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    expected = scheduler.scale_noise(x0, scheduler.timesteps[: len(sigmas)], noise)
    assert torch.allclose(noised.noisy, expected, atol=1e-6)


def test_schemes_draw_different_sigmas() -> None:
    drawn = {s: objective(flow_weighting_scheme=s).noise(latents(), torch.Generator().manual_seed(1)).timesteps
             for s in ("none", "logit_normal", "mode")}
    assert not torch.allclose(drawn["none"], drawn["logit_normal"])
    assert not torch.allclose(drawn["none"], drawn["mode"])
    weights = {s: objective(flow_weighting_scheme=s).noise(latents(), torch.Generator().manual_seed(1)).weights
               for s in ("none", "sigma_sqrt", "cosmap")}
    assert torch.equal(weights["none"], torch.ones(4))
    assert not torch.allclose(weights["sigma_sqrt"], weights["cosmap"])


def test_euler_step_with_the_target_lands_on_the_data() -> None:
    # The sign convention the samplers assume: x_0 = x_sigma - sigma * v.
    x0 = latents()[:1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=[0.7])
    noisy = flow_noisy(x0, noise, torch.tensor([0.7]))
    stepped = scheduler.step(noise - x0, scheduler.timesteps[0], noisy).prev_sample
    assert torch.allclose(stepped, x0, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_fixed_shift_matches_the_scheduler(shift: float) -> None:
    plain = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas
    shifted = FlowMatchEulerDiscreteScheduler(shift=shift).sigmas
    assert torch.allclose(shift_sigmas(plain, shift), shifted, atol=1e-6)


def test_fixed_shift_is_applied_to_drawn_sigmas() -> None:
    flow = objective(flow_shift=3.0)
    noised = flow.noise(latents(), torch.Generator().manual_seed(1))
    _, sigmas = replay(1, latents().shape, flow.config)
    assert torch.allclose(noised.timesteps, 3 * sigmas / (1 + 2 * sigmas) * 1000)
    assert (noised.timesteps > sigmas * 1000).all()  # pushed toward noise


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096, 8192])
def test_resolution_shift_matches_flux(seq_len: int) -> None:
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    assert resolution_shift_mu(seq_len, 256, 4096, 0.5, 1.15) == pytest.approx(mu)
    assert resolution_shift_mu(seq_len, 64, 1024, 0.2, 2.0) == pytest.approx(calculate_shift(seq_len, 64, 1024, 0.2, 2.0))
    # exp(mu) as a static shift is the scheduler's exponential time shift.
    t = torch.linspace(0.05, 1.0, 20)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    assert torch.allclose(shift_sigmas(t, resolution_shift(seq_len, 256, 4096, 0.5, 1.15)),
                          scheduler.time_shift(mu, 1.0, t), atol=1e-6)


def test_resolution_shifting_uses_the_image_token_count() -> None:
    flow = objective(flow_resolution_shifting=True, flow_shift=7.0)  # flow_shift is then ignored
    x0 = torch.randn(2, 16, 64, 32, generator=torch.Generator().manual_seed(0))  # 32 x 16 = 512 tokens
    shift = math.exp(calculate_shift(512, 256, 4096, 0.5, 1.15))
    assert flow.shift_for(x0) == pytest.approx(shift)
    noised = flow.noise(x0, torch.Generator().manual_seed(1))
    _, sigmas = replay(1, x0.shape, flow.config)
    assert torch.allclose(noised.timesteps, shift_sigmas(sigmas, shift) * 1000)
    small = torch.zeros(2, 16, 8, 8)
    assert flow.shift_for(small) < flow.shift_for(x0)  # smaller images, less shift


def test_draws_repeat_from_the_same_generator_state() -> None:
    flow = objective(flow_weighting_scheme="logit_normal")
    first = flow.noise(latents(), torch.Generator().manual_seed(5))
    again = flow.noise(latents(), torch.Generator().manual_seed(5))
    assert torch.equal(first.noisy, again.noisy) and torch.equal(first.timesteps, again.timesteps)
