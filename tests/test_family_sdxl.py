"""SDXL: the three proofs (target, learns the data, diffusers round trip)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.families.sdxl import SDXLFamily
from simpletuner.training.objectives import DiffusionObjective

pytestmark = pytest.mark.slow


def test_target_is_epsilon_for_the_sdxl_scheduler(tiny_sdxl: Path) -> None:
    from simpletuner.families.base import ModelSource

    scheduler = SDXLFamily().load_noise_scheduler(ModelSource(str(tiny_sdxl)))
    objective = DiffusionObjective(scheduler, type("C", (), {"snr_gamma": None})())
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    noised = objective.noise(latents, generator)
    # replay the same draws to recover the noise and check both target and input
    replay = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=replay)
    timesteps = torch.randint(0, 1000, (2,), generator=replay)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.equal(noised.target, noise)
    assert torch.allclose(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise, atol=1e-6)


def test_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = write_two_class_project(tmp_path)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    vae = base.vae
    targets = class_latents(lambda px: vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    before = separation(pipeline_sampler(base, guidance_scale=1.0), targets)
    output = train_in_process(
        root, tiny_sdxl, "sdxl", "--model_type", "full", "--learning_rate", "3e-3", "--snr_gamma", "5",
        "--train_batch_size", "4", "--max_train_steps", "150", "--lr_scheduler", "constant",
    )
    trained = StableDiffusionXLPipeline.from_pretrained(output)
    after = separation(pipeline_sampler(trained, guidance_scale=1.0), targets)
    assert_learned(before, after)
