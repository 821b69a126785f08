"""PixArt-Sigma: the three proofs (target, learns the data, diffusers round trip)
and --pretrained_t5_model_name_or_path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, PixArtSigmaPipeline
from safetensors.torch import load_file

from family_harness import assert_learned, class_latents, pipeline_sampler, separation, train_in_process, write_two_class_project
from simpletuner.errors import ConfigError
from simpletuner.families.base import ModelSource
from simpletuner.families.pixart_sigma import LORA_WEIGHT_NAME, PixArtSigmaFamily
from simpletuner.families.sdxl import SDXLFamily
from simpletuner.training.caches import text_encoder_identity

pytestmark = pytest.mark.slow

# No classifier-free guidance; the tiny transformer is 64 px, outside the
# pipeline's resolution bins; captions as written (cleaning needs bs4).
SAMPLING = {"guidance_scale": 1.0, "use_resolution_binning": False, "clean_caption": False}


def _text_batch(family: PixArtSigmaFamily, source: ModelSource, prompts: list[str]) -> dict[str, torch.Tensor]:
    entries = family.encode_text(family.load_text_encoders(source), prompts)
    return {name: torch.stack([entry[name] for entry in entries]) for name in entries[0]}


def test_target_is_epsilon_and_prediction_is_the_epsilon_half(tiny_pixart_sigma: Path) -> None:
    family, source = PixArtSigmaFamily(), ModelSource(str(tiny_pixart_sigma))
    scheduler = family.load_noise_scheduler(source)
    assert isinstance(scheduler, DDPMScheduler)
    assert (scheduler.config.prediction_type, scheduler.config.beta_schedule) == ("epsilon", "linear")
    objective = family.make_objective(scheduler, SimpleNamespace(snr_gamma=None))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = objective.noise(latents, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)  # the same draws: the noise, then the timesteps
    noise = torch.randn(latents.shape, generator=replay)
    timesteps = torch.randint(0, 1000, (2,), generator=replay)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.equal(noised.target, noise)
    assert torch.allclose(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise, atol=1e-6)

    # Learned sigma: of the 2 x 4 output channels only the first four (epsilon) are trained.
    output = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    prediction = family.prediction(SimpleNamespace(sample=output), torch.zeros(2, 4, 3, 3))
    assert torch.equal(prediction, output[:, :4])

    # The real transformer, called as training calls it.
    transformer = family.load_denoiser(source).eval()
    assert transformer.config.out_channels == 2 * transformer.config.in_channels
    batch = _text_batch(family, source, ["red", "a blue square"])
    assert batch["prompt_embeds"].shape == (2, 300, 32) and batch["prompt_attention_mask"].shape == (2, 300)
    geometry = SimpleNamespace(original_size=(96, 64), target_size=(64, 64))
    batch.update(family.sample_conditioning([geometry, geometry]))
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    steps = torch.tensor([10, 900])
    with torch.no_grad():
        output = transformer(**family.model_inputs(batch, noisy, steps))
        prediction = family.prediction(output, noisy)
        assert torch.equal(prediction, output.sample.chunk(2, dim=1)[0])  # what the pipeline keeps
        # The attention mask reaches the model: padding positions do not matter...
        padded = dict(batch, prompt_embeds=batch["prompt_embeds"].masked_fill(~batch["prompt_attention_mask"].bool()[..., None], 100.0))
        assert torch.allclose(transformer(**family.model_inputs(padded, noisy, steps)).sample, output.sample, atol=1e-5), \
            "padding changed the output: the attention mask does not reach the model"
        # ...while the caption does.
        swapped = {name: value.flip(0) if name.startswith("prompt") else value for name, value in batch.items()}
        assert not torch.allclose(transformer(**family.model_inputs(swapped, noisy, steps)).sample, output.sample, atol=1e-3)


def test_full_fine_tune_learns_two_classes(tmp_path: Path, tiny_pixart_sigma: Path) -> None:
    root = write_two_class_project(tmp_path)
    base = PixArtSigmaPipeline.from_pretrained(tiny_pixart_sigma)
    vae = base.vae
    targets = class_latents(lambda px: vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    before = separation(pipeline_sampler(base, **SAMPLING), targets)
    output = train_in_process(
        root, tiny_pixart_sigma, "pixart_sigma", "--model_type", "full", "--learning_rate", "3e-3",
        "--train_batch_size", "8", "--max_train_steps", "600", "--lr_scheduler", "cosine",
    )
    # The full fine-tune is a complete diffusers folder; sampled with the shipped DPM-Solver++.
    trained = PixArtSigmaPipeline.from_pretrained(output)
    after = separation(pipeline_sampler(trained, **SAMPLING), targets)
    assert_learned(before, after)


def _two_step_latents(pipeline: PixArtSigmaPipeline) -> torch.Tensor:
    return pipeline_sampler(pipeline, steps=2, **SAMPLING)("red", 0)


def test_lora_round_trip_through_peft(tmp_path: Path, tiny_pixart_sigma: Path) -> None:
    from peft import get_peft_model_state_dict

    root = write_two_class_project(tmp_path, per_class=2)
    output = train_in_process(
        root, tiny_pixart_sigma, "pixart_sigma", "--model_type", "lora", "--lora_rank", "4", "--lora_alpha", "8",
        "--learning_rate", "1e-2", "--train_batch_size", "4", "--max_train_steps", "5",
    )
    saved = load_file(str(output / LORA_WEIGHT_NAME))
    assert saved and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in saved)

    # PixArtSigmaPipeline has no load_lora_weights and PixArtTransformer2DModel
    # no load_lora_adapter; load_lora does what the latter does with PEFT.
    pipeline = PixArtSigmaPipeline.from_pretrained(tiny_pixart_sigma)
    before = _two_step_latents(pipeline)
    PixArtSigmaFamily().load_lora(pipeline, output)
    adapter = pipeline.transformer.peft_config["default"]
    assert (adapter.r, adapter.lora_alpha) == (4, 8)  # from the file's metadata, not guessed
    loaded = get_peft_model_state_dict(pipeline.transformer)
    state = {k.removeprefix("transformer."): v for k, v in saved.items()}
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    after = _two_step_latents(pipeline)
    assert not torch.allclose(before, after, atol=1e-4), "the trained LoRA does not change the generation"


def test_pretrained_t5_is_loaded_from_its_own_folder(tmp_path: Path, tiny_pixart_sigma: Path) -> None:
    from transformers import T5EncoderModel

    from simpletuner.tools.tiny_model import make_tiny_model

    other = make_tiny_model("pixart_sigma", tmp_path / "other_t5", seed=1)
    family = PixArtSigmaFamily()
    options = dict(pretrained_model_name_or_path=str(tiny_pixart_sigma), revision=None, variant=None)
    plain = ModelSource.from_config(SimpleNamespace(**options, pretrained_t5_model_name_or_path=None), family)
    redirected = ModelSource.from_config(SimpleNamespace(**options, pretrained_t5_model_name_or_path=str(other)), family)
    assert text_encoder_identity(plain, family) != text_encoder_identity(redirected, family)
    with pytest.raises(ConfigError, match="no T5"):
        ModelSource.from_config(SimpleNamespace(**options, pretrained_t5_model_name_or_path=str(other)), SDXLFamily())

    root = write_two_class_project(tmp_path / "project", per_class=2)
    output = train_in_process(
        root, tiny_pixart_sigma, "pixart_sigma", "--model_type", "full", "--train_batch_size", "2",
        "--max_train_steps", "1", "--pretrained_t5_model_name_or_path", str(other),
    )
    captions = ["blue", "red"]
    expected = _text_batch(family, ModelSource(str(other)), captions)["prompt_embeds"]
    base = _text_batch(family, ModelSource(str(tiny_pixart_sigma)), captions)["prompt_embeds"]
    assert not torch.allclose(expected, base, atol=1e-3)
    cached = [load_file(str(path)) for path in (root / "cache/text").rglob("*.safetensors")]
    assert len(cached) == 3  # two captions and the empty prompt
    for embeds in expected:
        assert any(torch.allclose(entry["prompt_embeds"], embeds, atol=1e-6) for entry in cached)
    for embeds in base:
        assert not any(torch.allclose(entry["prompt_embeds"], embeds, atol=1e-3) for entry in cached)
    # The saved model carries the T5 it was trained with.
    saved = T5EncoderModel.from_pretrained(output / "text_encoder").state_dict()
    reference = T5EncoderModel.from_pretrained(other / "text_encoder").state_dict()
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
