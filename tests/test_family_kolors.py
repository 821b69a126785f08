"""Kolors: the three proofs (target, learns the data, diffusers round trip)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import EulerDiscreteScheduler, KolorsPipeline
from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
from safetensors.torch import load_file

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.families.base import ModelSource
from simpletuner.families.kolors import KolorsFamily
from simpletuner.training.noise_schedule import inference_scheduler, training_noise_scheduler

pytestmark = pytest.mark.slow

OPTIONS = SimpleNamespace(prediction_type=None, rescale_betas_zero_snr=False, snr_gamma=None)


def test_tiny_kolors_is_the_diffusers_layout(tiny_kolors: Path) -> None:
    pipeline = KolorsPipeline.from_pretrained(tiny_kolors)
    assert isinstance(pipeline.text_encoder, ChatGLMModel) and isinstance(pipeline.tokenizer, ChatGLMTokenizer)
    assert pipeline.unet.config.encoder_hid_dim_type == "text_proj"
    assert pipeline.unet.config.encoder_hid_dim == pipeline.text_encoder.config.hidden_size
    ids = pipeline.tokenizer("a red square").input_ids
    assert ids[:2] == pipeline.tokenizer.get_prefix_tokens() and pipeline.tokenizer.decode(ids[2:]) == "a red square"



def test_tiny_kolors_builds_byte_identical(tmp_path: Path, tiny_kolors: Path) -> None:
    from simpletuner.tools.tiny_model import make_tiny_model

    again = make_tiny_model("kolors", tmp_path / "again", seed=0)
    files = sorted(p.relative_to(tiny_kolors) for p in tiny_kolors.rglob("*") if p.is_file())
    assert Path("tokenizer/tokenizer.model") in files
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (tiny_kolors / name).read_bytes() == (again / name).read_bytes(), name

def test_target_is_epsilon_on_the_kolors_schedule(tiny_kolors: Path) -> None:
    family = KolorsFamily(OPTIONS)
    scheduler = training_noise_scheduler(family.load_noise_scheduler(ModelSource(str(tiny_kolors))), OPTIONS)
    # Training uses the betas the pipeline samples with: 1100 steps, beta_end 0.014.
    shipped = EulerDiscreteScheduler.from_pretrained(tiny_kolors, subfolder="scheduler")
    assert scheduler.config.num_train_timesteps == 1100
    assert torch.allclose(scheduler.alphas_cumprod, shipped.alphas_cumprod)
    objective = family.make_objective(scheduler, OPTIONS)
    latents = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = objective.noise(latents, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=replay)
    timesteps = torch.randint(0, 1100, (64,), generator=replay)
    assert torch.equal(noised.timesteps, timesteps) and timesteps.max() >= 1000
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.equal(noised.target, noise)
    assert torch.allclose(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise, atol=1e-6)


def test_conditioning_matches_what_the_pipeline_passes(tiny_kolors: Path) -> None:
    family = KolorsFamily(OPTIONS)
    source = ModelSource(str(tiny_kolors))
    pipeline = KolorsPipeline.from_pretrained(tiny_kolors)
    cached = family.encode_text(family.load_text_encoders(source), ["red", "a blue square"])
    embeds, _, pooled, _ = pipeline.encode_prompt(["red", "a blue square"], device="cpu", do_classifier_free_guidance=False)
    assert cached[0]["prompt_embeds"].shape == (256, pipeline.text_encoder.config.hidden_size)
    assert torch.allclose(torch.stack([c["prompt_embeds"] for c in cached]), embeds)
    assert torch.allclose(torch.stack([c["pooled_prompt_embeds"] for c in cached]), pooled)
    sample = SimpleNamespace(original_size=(96, 80), crop_top_left=(8, 0), target_size=(64, 64))
    time_ids = family.sample_conditioning([sample])["time_ids"]
    expected = pipeline._get_add_time_ids((96, 80), (8, 0), (64, 64), torch.float32, pooled.shape[-1])
    assert torch.equal(time_ids, expected)
    # Kolors' Euler scheduler can rescale its own betas: zero-SNR keeps it, with trailing spacing.
    zero_snr = inference_scheduler(pipeline.scheduler, None, zero_snr=True)
    assert isinstance(zero_snr, EulerDiscreteScheduler) and zero_snr.config.timestep_spacing == "trailing"


def test_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_kolors: Path) -> None:
    root = write_two_class_project(tmp_path)
    base = KolorsPipeline.from_pretrained(tiny_kolors)
    vae = base.vae
    targets = class_latents(lambda px: vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    before = separation(pipeline_sampler(base, guidance_scale=1.0), targets)
    output = train_in_process(
        root, tiny_kolors, "kolors", "--model_type", "full", "--learning_rate", "3e-3", "--snr_gamma", "5",
        "--train_batch_size", "4", "--max_train_steps", "150", "--lr_scheduler", "constant",
    )
    trained = KolorsPipeline.from_pretrained(output)  # the full fine-tune loads with from_pretrained
    after = separation(pipeline_sampler(trained, guidance_scale=1.0), targets)
    assert_learned(before, after)


def _two_step(pipeline: KolorsPipeline) -> torch.Tensor:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        "red", num_inference_steps=2, height=64, width=64, output_type="latent", guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).images


def test_lora_round_trips_through_load_lora_weights(tmp_path: Path, tiny_kolors: Path) -> None:
    root = write_two_class_project(tmp_path, per_class=2)
    output = train_in_process(
        root, tiny_kolors, "kolors", "--model_type", "lora", "--lora_rank", "4", "--learning_rate", "1e-2",
        "--train_batch_size", "2", "--max_train_steps", "3",
    )
    saved = load_file(str(output / "pytorch_lora_weights.safetensors"))
    assert saved and all(key.startswith("unet.") for key in saved)
    pipeline = KolorsPipeline.from_pretrained(tiny_kolors)
    before = _two_step(pipeline)
    pipeline.load_lora_weights(output)
    wrapped = [m for m in pipeline.unet.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert 2 * len(wrapped) == len(saved), "some saved LoRA weights did not load"
    after = _two_step(pipeline)
    assert not torch.allclose(before, after), "the trained LoRA did not change generation"
