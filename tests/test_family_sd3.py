"""SD3: the three proofs (flow target, learns the data, diffusers round trip) and --sd3_skip_t5."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.families.base import ModelSource
from simpletuner.families.sd3 import SD3Family
from simpletuner.training.flow_matching import FlowMatchingObjective

pytestmark = pytest.mark.slow

SIZE = 32  # 4 x 4 latents, 2 x 2 image tokens: quick to learn on a CPU
FLOW = dict(
    flow_weighting_scheme="none", flow_logit_mean=0.0, flow_logit_std=1.0, flow_mode_scale=1.29, flow_shift=3.0,
    flow_resolution_shifting=False, flow_base_seq_len=256, flow_max_seq_len=4096, flow_base_shift=0.5, flow_max_shift=1.15,
)


def _text_batch(family: SD3Family, source: ModelSource, prompts: list[str]) -> dict[str, torch.Tensor]:
    entries = family.encode_text(family.load_text_encoders(source), prompts)
    return {name: torch.stack([entry[name] for entry in entries]) for name in entries[0]}


def test_target_is_the_flow_velocity_for_the_sd3_scheduler(tiny_sd3: Path) -> None:
    family, source = SD3Family(), ModelSource(str(tiny_sd3))
    scheduler = family.load_noise_scheduler(source)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and scheduler.config.shift == 3.0
    objective = family.make_objective(scheduler, SimpleNamespace(**FLOW))
    assert isinstance(objective, FlowMatchingObjective)
    latents = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    noised = objective.noise(latents, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)  # the same draws: the noise, then the sigmas
    noise = torch.randn(latents.shape, generator=replay)
    sigmas = compute_density_for_timestep_sampling("none", 2, generator=replay)
    sigmas = 3 * sigmas / (1 + 2 * sigmas)  # --flow_shift 3
    assert torch.equal(noised.target, noise - latents)
    reference = FlowMatchEulerDiscreteScheduler(shift=1.0)
    reference.set_timesteps(sigmas=sigmas.tolist())
    assert torch.allclose(noised.timesteps, reference.timesteps[:2])
    assert torch.allclose(noised.noisy, reference.scale_noise(latents, reference.timesteps[:2], noise), atol=1e-6)


def test_embeds_latents_and_model_inputs_match_the_pipeline(tiny_sd3: Path) -> None:
    family, source = SD3Family(), ModelSource(str(tiny_sd3))
    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    batch = _text_batch(family, source, ["red", "a blue square"])
    with torch.no_grad():
        embeds, _, pooled, _ = pipeline.encode_prompt(["red", "a blue square"], None, None, do_classifier_free_guidance=False)
    inputs = family.model_inputs(batch, torch.zeros(2, 16, 4, 4), torch.tensor([10.0, 900.0]))
    assert torch.equal(inputs["encoder_hidden_states"], embeds) and torch.equal(inputs["pooled_projections"], pooled)
    assert batch["clip_prompt_embeds"].shape[1] == 77 and batch["t5_prompt_embeds"].shape[1] == 256

    # --sd3_skip_t5: the T5 tokens become zeros, as without a T5 encoder; CLIP is untouched.
    skipping = SD3Family(SimpleNamespace(sd3_skip_t5=True))
    skipped = skipping.model_inputs(batch, torch.zeros(2, 16, 4, 4), torch.tensor([10.0, 900.0]))["encoder_hidden_states"]
    assert torch.equal(skipped[:, :77], embeds[:, :77]) and not skipped[:, 77:].any() and embeds[:, 77:].abs().sum() > 0
    no_t5 = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, text_encoder_3=None, tokenizer_3=None)
    with torch.no_grad():
        assert torch.equal(skipped, no_t5.encode_prompt(["red", "a blue square"], None, None, do_classifier_free_guidance=False)[0])

    # Latents: (x - shift_factor) * scaling_factor, the inverse of the pipeline's decode.
    vae = family.load_vae(source)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(vae, pixels, [torch.Generator().manual_seed(0)])
    mean = vae.encode(pixels).latent_dist.mean
    assert torch.allclose(latents, (mean - vae.config.shift_factor) * vae.config.scaling_factor, atol=0.05)
    assert latents.std() > 0.5  # the tiny VAE's latents are unit-scale, like a trained one's

    # The real transformer, called as training calls it, listens to the caption.
    transformer = family.load_denoiser(source).eval()
    noisy = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = family.prediction(transformer(**family.model_inputs(batch, noisy, torch.tensor([500.0, 500.0]))), noisy)
        swapped = {name: value.flip(0) for name, value in batch.items()}
        other = family.prediction(transformer(**family.model_inputs(swapped, noisy, torch.tensor([500.0, 500.0]))), noisy)
    assert output.shape == noisy.shape and not torch.allclose(output, other, atol=1e-4)


def _sampler(pipeline: StableDiffusion3Pipeline, steps: int = 20):
    return pipeline_sampler(pipeline, size=SIZE, steps=steps, guidance_scale=1.0)  # no classifier-free guidance


def test_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_sd3: Path) -> None:
    root = write_two_class_project(tmp_path, size=SIZE)
    base = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    vae = base.vae
    targets = class_latents(lambda px: (vae.encode(px).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor, size=SIZE)
    before = separation(_sampler(base), targets)
    # --flow_shift 3 trains where the pipeline (scheduler shift 3.0) samples.
    output = train_in_process(
        root, tiny_sd3, "sd3", "--model_type", "full", "--learning_rate", "3e-3", "--flow_shift", "3",
        "--train_batch_size", "4", "--max_train_steps", "400", "--lr_scheduler", "constant",
    )
    trained = StableDiffusion3Pipeline.from_pretrained(output)  # the full fine-tune is a diffusers folder
    after = separation(_sampler(trained), targets)
    assert_learned(before, after)


@pytest.mark.filterwarnings("error:While injecting the PEFT adapters")  # keys the loader did not map
def test_lora_round_trip_through_load_lora_weights(tmp_path: Path, tiny_sd3: Path) -> None:
    root = write_two_class_project(tmp_path, size=SIZE, per_class=2)
    output = train_in_process(
        root, tiny_sd3, "sd3", "--model_type", "lora", "--lora_rank", "4", "--lora_alpha", "8",
        "--learning_rate", "1e-2", "--train_batch_size", "4", "--max_train_steps", "5",
    )
    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    before = _sampler(pipeline, steps=2)("red", 0)
    pipeline.load_lora_weights(str(output))
    config = next(iter(pipeline.transformer.peft_config.values()))
    assert (config.r, config.lora_alpha) == (4, 8)
    wrapped = {name.rsplit(".", 1)[-1] for name, module in pipeline.transformer.named_modules() if hasattr(module, "lora_A")}
    assert {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"} <= wrapped
    after = _sampler(pipeline, steps=2)("red", 0)
    assert not torch.allclose(before, after, atol=1e-4), "the trained LoRA does not change the generation"
