"""SD 1.x / 2.x (legacy): the three proofs, plus zero terminal SNR."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.families.base import ModelSource
from simpletuner.families.legacy import LegacyFamily
from simpletuner.training.loss import min_snr_weights, noise_prediction_target
from simpletuner.training.noise_schedule import inference_scheduler, training_noise_scheduler

pytestmark = pytest.mark.slow


def _options(**values):
    defaults = {"prediction_type": None, "rescale_betas_zero_snr": False, "snr_gamma": None}
    return SimpleNamespace(**{**defaults, **values})


def _noised(model: Path, **options):
    """The family's objective on fixed latents, and the noise/timesteps it drew (replayed)."""
    config = _options(**options)
    family = LegacyFamily(config)
    scheduler = training_noise_scheduler(family.load_noise_scheduler(ModelSource(str(model))), config)
    objective = family.make_objective(scheduler, config)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = objective.noise(latents, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=replay)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (3,), generator=replay)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.allclose(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise, atol=1e-6)
    return scheduler, noised, latents, noise, timesteps, alpha_bar


def test_sd1_target_is_epsilon(tiny_legacy: Path) -> None:
    scheduler, noised, _, noise, _, _ = _noised(tiny_legacy)
    assert scheduler.config.prediction_type == "epsilon"
    assert torch.equal(noised.target, noise)


def test_sd2_target_is_the_velocity(tiny_legacy_v: Path) -> None:
    scheduler, noised, latents, noise, timesteps, alpha_bar = _noised(tiny_legacy_v)
    assert scheduler.config.prediction_type == "v_prediction"  # read from the model's scheduler config
    assert torch.allclose(noised.target, scheduler.get_velocity(latents, noise, timesteps))
    # v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0 (Salimans & Ho, 2022)
    assert torch.allclose(noised.target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents, atol=1e-6)


def test_prediction_type_option_overrides_the_scheduler(tiny_legacy: Path, tiny_legacy_v: Path) -> None:
    _, noised, latents, noise, timesteps, alpha_bar = _noised(tiny_legacy, prediction_type="v_prediction")
    assert torch.allclose(noised.target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents, atol=1e-6)
    _, noised, latents, *_ = _noised(tiny_legacy_v, prediction_type="sample")
    assert torch.equal(noised.target, latents)
    _, noised, _, noise, *_ = _noised(tiny_legacy_v, prediction_type="epsilon")
    assert torch.equal(noised.target, noise)


def test_zero_terminal_snr_rescales_the_training_schedule(tiny_legacy_v: Path) -> None:
    plain, *_ = _noised(tiny_legacy_v)
    scheduler, *_ = _noised(tiny_legacy_v, rescale_betas_zero_snr=True)
    assert plain.alphas_cumprod[-1] > 1e-3
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    # Lin et al.: the first timestep keeps its signal-to-noise ratio.
    assert scheduler.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-4)
    # At the last timestep the input is pure noise and v is -x0.
    latents, noise, last = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([999])
    assert torch.allclose(scheduler.add_noise(latents, noise, last), noise, atol=1e-6)
    assert torch.allclose(noise_prediction_target(scheduler, latents, noise, last), -latents, atol=1e-6)
    # min-SNR weighting stays finite where SNR is 0 (its limit, for epsilon).
    epsilon = training_noise_scheduler(plain, _options(prediction_type="epsilon", rescale_betas_zero_snr=True))
    assert torch.isfinite(min_snr_weights(epsilon, torch.tensor([0, 500, 999]), 5.0)).all()
    assert min_snr_weights(scheduler, torch.tensor([999]), 5.0).item() == 0.0


def test_zero_terminal_snr_samples_with_trailing_spacing(tiny_legacy: Path) -> None:
    base = StableDiffusionPipeline.from_pretrained(tiny_legacy).scheduler  # PNDM cannot rescale its betas
    sampler = inference_scheduler(base, "v_prediction", zero_snr=True)
    assert isinstance(sampler, DDIMScheduler)
    assert sampler.config.timestep_spacing == "trailing" and sampler.config.rescale_betas_zero_snr
    assert sampler.config.prediction_type == "v_prediction" and not sampler.config.clip_sample
    sampler.set_timesteps(4)
    assert sampler.timesteps[0] == 999, "trailing spacing starts sampling at the pure-noise timestep"
    base.set_timesteps(4)
    assert base.timesteps.max() < 999
    assert inference_scheduler(base, None, zero_snr=False) is base


def _learns(tmp_path: Path, model: Path, *flags: str) -> None:
    root = write_two_class_project(tmp_path)
    base = StableDiffusionPipeline.from_pretrained(model)
    vae = base.vae
    targets = class_latents(lambda px: vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    before = separation(pipeline_sampler(base, guidance_scale=1.0), targets)
    output = train_in_process(
        root, model, "legacy", "--model_type", "full", "--train_batch_size", "4", "--lr_scheduler", "constant",
        *flags,
    )
    trained = StableDiffusionPipeline.from_pretrained(output)
    after = separation(pipeline_sampler(trained, guidance_scale=1.0), targets)
    assert_learned(before, after)


def test_sd1_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_legacy: Path) -> None:
    # Epsilon prediction learns the caption slowly at high noise, hence the long run
    # (350 steps at 3e-3).  --snr_gamma is on so a whole run trains with weighted
    # losses; this test does not show that Min-SNR is what makes it learn (that the
    # weights reach the loss is checked in test_loss_weights_in_training.py).
    _learns(tmp_path, tiny_legacy, "--max_train_steps", "350", "--learning_rate", "3e-3", "--snr_gamma", "5")


def test_sd2_v_prediction_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_legacy_v: Path) -> None:
    _learns(tmp_path, tiny_legacy_v, "--max_train_steps", "120", "--learning_rate", "1e-3")


def _two_step(pipeline: StableDiffusionPipeline) -> torch.Tensor:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        "red", num_inference_steps=2, height=64, width=64, output_type="latent", guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).images


def test_lora_round_trips_through_load_lora_weights(tmp_path: Path, tiny_legacy: Path) -> None:
    root = write_two_class_project(tmp_path, per_class=2)
    output = train_in_process(
        root, tiny_legacy, "legacy", "--model_type", "lora", "--lora_rank", "4", "--learning_rate", "1e-2",
        "--train_batch_size", "2", "--max_train_steps", "3",
    )
    saved = load_file(str(output / "pytorch_lora_weights.safetensors"))
    assert saved and all(key.startswith("unet.") for key in saved)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_legacy)
    before = _two_step(pipeline)
    pipeline.load_lora_weights(output)
    # every saved A/B pair became a LoRA layer of the pipeline's UNet
    wrapped = [m for m in pipeline.unet.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert 2 * len(wrapped) == len(saved)
    after = _two_step(pipeline)
    assert not torch.allclose(before, after), "the trained LoRA did not change generation"


def test_zero_snr_full_fine_tune_saves_a_pipeline_that_samples_as_trained(tmp_path: Path, tiny_legacy: Path) -> None:
    root = write_two_class_project(tmp_path, per_class=2)
    output = train_in_process(
        root, tiny_legacy, "legacy", "--model_type", "full", "--learning_rate", "1e-3", "--train_batch_size", "2",
        "--max_train_steps", "2", "--prediction_type", "v_prediction", "--rescale_betas_zero_snr", "--snr_gamma", "5",
    )
    trained = StableDiffusionPipeline.from_pretrained(output)
    base = StableDiffusionPipeline.from_pretrained(tiny_legacy)
    assert isinstance(trained.scheduler, DDIMScheduler)
    config = trained.scheduler.config
    assert (config.prediction_type, config.timestep_spacing, config.rescale_betas_zero_snr) == (
        "v_prediction", "trailing", True)
    base_unet = dict(base.unet.named_parameters())
    assert any(not torch.equal(p, base_unet[name]) for name, p in trained.unet.named_parameters())
    assert torch.isfinite(_two_step(trained)).all()
