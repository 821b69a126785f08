"""--noise_offset, --noise_offset_probability, --input_perturbation and
--use_soft_min_snr: exact against their formulas, for epsilon, v and flow
matching, from config to the objective the trainer calls."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from simpletuner.config.loader import load_config
from simpletuner.config.options import OPTIONS
from simpletuner.errors import ConfigError
from simpletuner.training.flow_matching import FlowMatchingObjective
from simpletuner.training.loss import soft_min_snr_weights
from simpletuner.training.objectives import DiffusionObjective

SHAPE = (64, 4, 6, 6)


def _scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type)


def _latents() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def _draw(objective, seed: int = 1):
    return objective.noise(_latents(), torch.Generator().manual_seed(seed))


def _diffusion(prediction_type: str = "epsilon", **options) -> DiffusionObjective:
    return DiffusionObjective(_scheduler(prediction_type), SimpleNamespace(**options))


def _flow(**options) -> FlowMatchingObjective:
    flow_defaults = {o.name: o.default for o in OPTIONS if o.name.startswith("flow_")}
    return FlowMatchingObjective(FlowMatchEulerDiscreteScheduler(), SimpleNamespace(**flow_defaults, **options))


def _replay(seed: int, offset: float, probability: float, perturbation: float, timestep_draw) -> dict:
    """The objective's draws, made again from the formula in its documented order."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=generator)
    timesteps = timestep_draw(generator)
    if offset:
        per_channel = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=generator)
        chosen = (torch.rand(SHAPE[0], generator=generator) < probability).float().view(-1, 1, 1, 1)
        noise = noise + offset * per_channel * chosen
    perturbed = noise
    if perturbation:
        perturbed = noise + perturbation * torch.randn(SHAPE, generator=generator)
    return {"noise": noise, "perturbed": perturbed, "timesteps": timesteps}


def _uniform_timesteps(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1000, (SHAPE[0],), generator=generator)


# ---------------------------------------------------------------- noise offset


def test_offset_is_a_per_sample_per_channel_constant_in_input_and_target() -> None:
    plain = _draw(_diffusion())
    offset = _draw(_diffusion(noise_offset=0.5, noise_offset_probability=1.0))
    # the offset draws come after the noise and timesteps, so those are shared
    assert torch.equal(plain.timesteps, offset.timesteps)
    added = offset.target - plain.target  # epsilon: the target is the (offset) noise
    assert torch.allclose(added, added[..., :1, :1].expand_as(added), atol=1e-6), "constant over height and width"
    per_channel = added[..., 0, 0]
    assert per_channel.std().item() == pytest.approx(0.5, rel=0.15)
    assert (per_channel != 0).all()
    # the noisy input is built from the same offset noise
    scheduler = _scheduler("epsilon")
    assert torch.allclose(offset.noisy, scheduler.add_noise(_latents(), offset.target, offset.timesteps), atol=1e-6)


@pytest.mark.parametrize("probability", [0.25, 0.7])
def test_offset_reaches_each_sample_with_the_given_probability(probability: float) -> None:
    noised = _draw(_diffusion(noise_offset=0.3, noise_offset_probability=probability))
    expected = _replay(1, 0.3, probability, 0.0, _uniform_timesteps)
    assert torch.equal(noised.timesteps, expected["timesteps"])
    assert torch.allclose(noised.target, expected["noise"], atol=1e-6)
    plain = _draw(_diffusion())
    offset_samples = (noised.target != plain.target).flatten(1).any(1)
    assert 0 < offset_samples.sum() < SHAPE[0]
    # over many batches the share of offset samples is the probability
    objective = _diffusion(noise_offset=0.3, noise_offset_probability=probability)
    generator, baseline = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    hits = 0
    for _ in range(20):
        with_offset = objective.noise(_latents(), generator)
        without = _diffusion().noise(_latents(), baseline)
        baseline.set_state(generator.get_state())  # keep the two streams aligned
        hits += (with_offset.target != without.target).flatten(1).any(1).sum().item()
    assert hits / (20 * SHAPE[0]) == pytest.approx(probability, abs=0.05)


def test_v_prediction_target_is_the_velocity_of_the_offset_noise() -> None:
    scheduler = _scheduler("v_prediction")
    noised = _draw(DiffusionObjective(scheduler, SimpleNamespace(noise_offset=0.4, noise_offset_probability=1.0)))
    noise = _replay(1, 0.4, 1.0, 0.0, _uniform_timesteps)["noise"]
    assert torch.allclose(noised.target, scheduler.get_velocity(_latents(), noise, noised.timesteps), atol=1e-6)
    assert torch.allclose(noised.noisy, scheduler.add_noise(_latents(), noise, noised.timesteps), atol=1e-6)


def test_flow_matching_velocity_and_input_use_the_offset_noise() -> None:
    plain = _draw(_flow())
    offset = _draw(_flow(noise_offset=0.5, noise_offset_probability=1.0))
    assert torch.equal(plain.timesteps, offset.timesteps)
    added = offset.target - plain.target  # velocity noise - x0 moves by the offset
    assert torch.allclose(added, added[..., :1, :1].expand_as(added), atol=1e-6)
    assert added.abs().min() > 0
    sigmas = (offset.timesteps / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(offset.noisy - plain.noisy, sigmas * added, atol=1e-5)


# ---------------------------------------------------------- input perturbation


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_input_perturbation_moves_the_input_and_not_the_target(prediction_type: str) -> None:
    scheduler = _scheduler(prediction_type)
    plain = _draw(DiffusionObjective(scheduler, SimpleNamespace()))
    perturbed = _draw(DiffusionObjective(scheduler, SimpleNamespace(input_perturbation=0.1)))
    assert torch.equal(perturbed.target, plain.target)
    assert torch.equal(perturbed.timesteps, plain.timesteps)
    expected = _replay(1, 0.0, 0.0, 0.1, _uniform_timesteps)
    assert torch.allclose(perturbed.noisy, scheduler.add_noise(_latents(), expected["perturbed"], plain.timesteps), atol=1e-6)
    # the extra noise is 0.1 x N(0, 1), scaled into the input by sqrt(1 - alpha_bar)
    alpha_bar = scheduler.alphas_cumprod[plain.timesteps].view(-1, 1, 1, 1)
    extra = (perturbed.noisy - plain.noisy) / (1 - alpha_bar).sqrt()
    assert extra.std().item() == pytest.approx(0.1, rel=0.05)


def test_flow_matching_input_perturbation_keeps_the_velocity_target() -> None:
    plain = _draw(_flow())
    perturbed = _draw(_flow(input_perturbation=0.2))
    assert torch.equal(perturbed.target, plain.target)
    sigmas = (plain.timesteps / 1000).view(-1, 1, 1, 1)
    extra = (perturbed.noisy - plain.noisy) / sigmas
    assert extra.std().item() == pytest.approx(0.2, rel=0.05)


def test_offset_and_perturbation_together_replay_exactly() -> None:
    noised = _draw(_diffusion(noise_offset=0.2, noise_offset_probability=0.5, input_perturbation=0.1))
    expected = _replay(1, 0.2, 0.5, 0.1, _uniform_timesteps)
    scheduler = _scheduler("epsilon")
    assert torch.allclose(noised.target, expected["noise"], atol=1e-6)
    assert torch.allclose(noised.noisy, scheduler.add_noise(_latents(), expected["perturbed"], expected["timesteps"]), atol=1e-6)


# ---------------------------------------------------------------- soft min-SNR


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_objective_weights_by_soft_min_snr(prediction_type: str) -> None:
    scheduler = _scheduler(prediction_type)
    noised = _draw(DiffusionObjective(scheduler, SimpleNamespace(use_soft_min_snr=True, soft_min_snr_sigma_data=1.0)))
    assert torch.allclose(noised.weights, soft_min_snr_weights(scheduler, noised.timesteps, 1.0))
    assert _draw(DiffusionObjective(scheduler, SimpleNamespace())).weights is None


# ------------------------------------------------------------------ validation

BASE = ["--model_family", "legacy", "--pretrained_model_name_or_path", "model", "--data_backend_config",
        "mdb.json", "--output_dir", "out"]


@pytest.mark.parametrize("flags, fragments", [
    (["--use_soft_min_snr"], ["--use_soft_min_snr needs --soft_min_snr_sigma_data"]),
    (["--use_soft_min_snr", "--soft_min_snr_sigma_data", "1", "--snr_gamma", "5"], ["--snr_gamma", "only one"]),
    (["--use_soft_min_snr", "--soft_min_snr_sigma_data", "0"], ["--soft_min_snr_sigma_data must be greater than 0"]),
    (["--noise_offset", "0.1", "--noise_offset_probability", "0"], ["never applies --noise_offset"]),
    (["--noise_offset", "-0.1"], ["--noise_offset"]),
])
def test_inconsistent_settings_are_refused(tmp_path: Path, flags: list, fragments: list) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(BASE + flags, env={}, cwd=tmp_path)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("flags, ignored", [
    (["--soft_min_snr_sigma_data", "1"], "--soft_min_snr_sigma_data=1.0 has no effect: only --use_soft_min_snr"),
    (["--noise_offset_probability", "0.5"], "--noise_offset_probability=0.5 has no effect: --noise_offset is 0"),
])
def test_settings_without_their_switch_are_ignored_with_a_warning(tmp_path: Path, flags: list, ignored: str) -> None:
    config = load_config(BASE + flags, env={}, cwd=tmp_path)
    assert len(config.ignored) == 1 and config.ignored[0].startswith(ignored), config.ignored


def test_flow_families_take_offset_and_perturbation_but_not_soft_min_snr(tmp_path: Path) -> None:
    flow = ["--model_family", "flux", *BASE[2:]]
    config = load_config(flow + ["--noise_offset", "0.1", "--input_perturbation", "0.1"], env={}, cwd=tmp_path)
    assert (config.noise_offset, config.input_perturbation) == (0.1, 0.1)
    config = load_config(flow + ["--use_soft_min_snr", "--soft_min_snr_sigma_data", "1"], env={}, cwd=tmp_path)
    assert [line.split(" has no effect: only --model_family")[0] for line in config.ignored] == [
        "--use_soft_min_snr=true", "--soft_min_snr_sigma_data=1.0"]
    assert config.use_soft_min_snr is False


# ------------------------------------------------------- through the real trainer


@pytest.mark.slow
def test_options_reach_the_objective_the_trainer_calls(tmp_path: Path, tiny_legacy: Path, monkeypatch) -> None:
    from family_harness import train_in_process, write_two_class_project

    calls = []
    original = DiffusionObjective.noise

    def recording(self, latents, generator):
        noised = original(self, latents, generator)
        calls.append((self, latents.detach().clone(), noised))
        return noised

    monkeypatch.setattr(DiffusionObjective, "noise", recording)
    flags = ("--max_train_steps", "2", "--train_batch_size", "4", "--noise_offset", "0.3",
             "--noise_offset_probability", "0.5", "--input_perturbation", "0.1", "--use_soft_min_snr",
             "--soft_min_snr_sigma_data", "0.7", "--timestep_bias_strategy", "later",
             "--timestep_bias_multiplier", "3", "--timestep_bias_portion", "0.3")
    project = write_two_class_project(tmp_path, per_class=4)
    output = train_in_process(project, tiny_legacy, "legacy", *flags)
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    assert len(calls) == 2

    # Replay the trainer's generator (seed 0, one process) through the formulas.
    objective = calls[0][0]
    scheduler = objective.scheduler
    bias = torch.ones(1000, dtype=torch.float64)
    bias[700:] = 3
    generator = torch.Generator().manual_seed(0)
    for _, latents, noised in calls:
        batch, channels = latents.shape[:2]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.multinomial(bias / bias.sum(), batch, replacement=True, generator=generator)
        per_channel = torch.randn(batch, channels, 1, 1, generator=generator)
        chosen = (torch.rand(batch, generator=generator) < 0.5).float().view(-1, 1, 1, 1)
        noise = noise + 0.3 * per_channel * chosen
        perturbed = noise + 0.1 * torch.randn(latents.shape, generator=generator)
        alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        sigma2 = (1 - alpha_bar.flatten()) / alpha_bar.flatten()
        assert torch.equal(noised.timesteps, timesteps)
        assert torch.allclose(noised.target, noise, atol=1e-6)  # the tiny SD1 model predicts epsilon
        assert torch.allclose(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * perturbed, atol=1e-5)
        assert torch.allclose(noised.weights, sigma2 / (sigma2 + 0.7**2), rtol=1e-5)

    # The same draws with every option off give other inputs, targets and weights.
    plain = DiffusionObjective(scheduler, SimpleNamespace()).noise(calls[0][1], torch.Generator().manual_seed(0))
    first = calls[0][2]
    assert plain.weights is None
    assert not torch.equal(plain.timesteps, first.timesteps)
    assert not torch.allclose(plain.noisy, first.noisy) and not torch.allclose(plain.target, first.target)
