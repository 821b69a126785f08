"""Flux: the three proofs (flow target, learns the data, diffusers round trip),
packing, position ids and the guidance embedding."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.families.base import ModelSource
from simpletuner.families.flux import FluxFamily
from simpletuner.training.flow_matching import FlowMatchingObjective

pytestmark = pytest.mark.slow

SIZE = 32  # 4 x 4 latents, 2 x 2 packed tokens: quick to learn on a CPU
FLOW = dict(
    flow_weighting_scheme="none", flow_logit_mean=0.0, flow_logit_std=1.0, flow_mode_scale=1.29, flow_shift=1.0,
    flow_resolution_shifting=True, flow_base_seq_len=256, flow_max_seq_len=4096, flow_base_shift=0.5, flow_max_shift=1.15,
)


def _text_batch(family: FluxFamily, source: ModelSource, prompts: list[str]) -> dict[str, torch.Tensor]:
    entries = family.encode_text(family.load_text_encoders(source), prompts)
    return {name: torch.stack([entry[name] for entry in entries]) for name in entries[0]}


def test_target_is_the_flow_velocity_with_resolution_shift(tiny_flux: Path) -> None:
    family, source = FluxFamily(), ModelSource(str(tiny_flux))
    scheduler = family.load_noise_scheduler(source)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and scheduler.config.use_dynamic_shifting
    objective = family.make_objective(scheduler, SimpleNamespace(**FLOW))
    assert isinstance(objective, FlowMatchingObjective)
    latents = torch.randn(2, 16, 32, 16, generator=torch.Generator().manual_seed(0))  # 16 x 8 = 128 packed tokens
    noised = objective.noise(latents, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)  # the same draws: the noise, then the sigmas
    noise = torch.randn(latents.shape, generator=replay)
    sigmas = compute_density_for_timestep_sampling("none", 2, generator=replay)
    # The shift FluxPipeline would sample this image size with (mu from calculate_shift).
    mu = calculate_shift(128, 256, 4096, 0.5, 1.15)
    sigmas = scheduler.time_shift(mu, 1.0, sigmas)
    assert torch.equal(noised.target, noise - latents)
    assert torch.allclose(noised.timesteps, sigmas * 1000, atol=1e-4)
    reference = FlowMatchEulerDiscreteScheduler(shift=1.0)
    reference.set_timesteps(sigmas=(noised.timesteps / 1000).tolist())
    assert torch.allclose(noised.noisy, reference.scale_noise(latents, reference.timesteps[:2], noise), atol=1e-5)


def test_packing_ids_guidance_and_embeds_match_the_pipeline(tiny_flux: Path) -> None:
    source = ModelSource(str(tiny_flux))
    family = FluxFamily(SimpleNamespace(flux_guidance_value=2.5))
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    batch = _text_batch(family, source, ["red", "a blue square"])
    with torch.no_grad():
        embeds, pooled, text_ids = pipeline.encode_prompt(["red", "a blue square"], None)
    assert torch.equal(batch["prompt_embeds"], embeds) and torch.equal(batch["pooled_prompt_embeds"], pooled)
    assert embeds.shape[1] == 512  # the pipeline's default max_sequence_length

    transformer = family.load_denoiser(source).eval()
    noisy = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    inputs = family.model_inputs(batch, noisy, torch.tensor([100.0, 800.0]))
    # What FluxPipeline.__call__ feeds the transformer for a 32 x 48 image.
    packed, image_ids = pipeline.prepare_latents(2, 16, 32, 48, noisy.dtype, "cpu", None, latents=noisy)
    assert torch.equal(inputs["hidden_states"], FluxPipeline._pack_latents(noisy, 2, 16, 4, 6))
    assert inputs["hidden_states"].shape == (2, 6, 64)
    assert torch.equal(inputs["img_ids"], image_ids) and torch.equal(inputs["txt_ids"], text_ids)
    assert torch.equal(inputs["timestep"], torch.tensor([0.1, 0.8]))  # the pipeline passes t / 1000
    assert torch.equal(inputs["guidance"], torch.tensor([2.5, 2.5]))  # --flux_guidance_value
    assert FluxFamily().model_inputs(batch, noisy, torch.tensor([1.0, 1.0]))["guidance"].tolist() == [1.0, 1.0]
    schnell = FluxFamily()
    schnell.guidance_embeds = False  # what load_denoiser records for a transformer without a guidance embedder
    assert "guidance" not in schnell.model_inputs(batch, noisy, torch.tensor([1.0, 1.0]))

    with torch.no_grad():
        output = transformer(**inputs)
        prediction = family.prediction(output, noisy)
        # prediction unpacks to the latent layout, which is the target's.
        assert torch.equal(prediction, FluxPipeline._unpack_latents(output.sample, 32, 48, 8))
        assert prediction.shape == noisy.shape
        assert torch.equal(family.prediction(SimpleNamespace(sample=inputs["hidden_states"]), noisy), noisy)
        # The guidance value and the caption reach the model.
        other_guidance = transformer(**dict(inputs, guidance=torch.tensor([4.0, 4.0]))).sample
        assert not torch.allclose(other_guidance, output.sample, atol=1e-5)
        swapped = {name: value.flip(0) for name, value in batch.items()}
        other_caption = transformer(**family.model_inputs(swapped, noisy, torch.tensor([100.0, 800.0]))).sample
        assert not torch.allclose(other_caption, output.sample, atol=1e-4)

    # Latents: (x - shift_factor) * scaling_factor, the inverse of the pipeline's decode.
    vae = family.load_vae(source)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(vae, pixels, [torch.Generator().manual_seed(0)])
    mean = vae.encode(pixels).latent_dist.mean
    assert torch.allclose(latents, (mean - vae.config.shift_factor) * vae.config.scaling_factor, atol=0.05)


def _sampler(pipeline: FluxPipeline, steps: int = 20):
    # guidance_scale 1.0: the value the run embedded (--flux_guidance_value's default).
    sample = pipeline_sampler(pipeline, size=SIZE, steps=steps, guidance_scale=1.0)
    # The pipeline returns packed latents; unpack them to compare with the VAE's.
    return lambda prompt, seed: FluxPipeline._unpack_latents(sample(prompt, seed)[None], SIZE, SIZE, 8)[0]


def test_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_flux: Path) -> None:
    root = write_two_class_project(tmp_path, size=SIZE)
    base = FluxPipeline.from_pretrained(tiny_flux)
    vae = base.vae
    targets = class_latents(lambda px: (vae.encode(px).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor, size=SIZE)
    before = separation(_sampler(base), targets)
    output = train_in_process(
        root, tiny_flux, "flux", "--model_type", "full", "--learning_rate", "3e-3", "--flow_shift", "3",
        "--train_batch_size", "4", "--max_train_steps", "100", "--lr_scheduler", "constant",
    )
    trained = FluxPipeline.from_pretrained(output)  # the full fine-tune is a diffusers folder
    after = separation(_sampler(trained), targets)
    assert_learned(before, after)


@pytest.mark.filterwarnings("error:While injecting the PEFT adapters")  # keys the loader did not map
def test_lora_round_trip_through_load_lora_weights(tmp_path: Path, tiny_flux: Path) -> None:
    root = write_two_class_project(tmp_path, size=SIZE, per_class=2)
    output = train_in_process(
        root, tiny_flux, "flux", "--model_type", "lora", "--lora_rank", "4", "--lora_alpha", "8",
        "--learning_rate", "1e-2", "--train_batch_size", "4", "--max_train_steps", "5",
    )
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    before = _sampler(pipeline, steps=2)("red", 0)
    pipeline.load_lora_weights(str(output))
    config = next(iter(pipeline.transformer.peft_config.values()))
    assert (config.r, config.lora_alpha) == (4, 8)
    wrapped = {name for name, module in pipeline.transformer.named_modules() if hasattr(module, "lora_A")}
    assert any(name.startswith("single_transformer_blocks.") for name in wrapped)
    assert {name.rsplit(".", 1)[-1] for name in wrapped} >= {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
    after = _sampler(pipeline, steps=2)("red", 0)
    assert not torch.allclose(before, after, atol=1e-4), "the trained LoRA does not change the generation"
