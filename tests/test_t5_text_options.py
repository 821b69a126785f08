"""SimpleTuner's T5 text options for SD3, Flux and PixArt-Sigma (issue 16):
--t5_padding, --tokenizer_max_length, --sd3_clip_uncond_behaviour,
--sd3_t5_uncond_behaviour and --flux_attention_masked_training, and that each
one enters the text-embed cache key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.families.base import ModelSource
from simpletuner.families.flux import FluxFamily
from simpletuner.families.pixart_sigma import PixArtSigmaFamily
from simpletuner.families.sd3 import SD3Family
from simpletuner.training.caches import text_encoder_identity

PROMPTS = ["red", "a blue square on a green field"]


def _batch(family, source: ModelSource, prompts: list[str]) -> dict[str, torch.Tensor]:
    entries = family.encode_text(family.load_text_encoders(source), prompts)
    return {name: torch.stack([entry[name] for entry in entries]) for name in entries[0]}


def _padding(tokenizer, prompts: list[str], length: int) -> torch.Tensor:
    """Where the pipelines' T5 tokenization puts padding (True), independently of our code."""
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    return ids == tokenizer.pad_token_id


@pytest.mark.parametrize("family_class, fixture, key, tokenizer_index", [
    (FluxFamily, "tiny_flux", "prompt_embeds", 1),
    (SD3Family, "tiny_sd3", "t5_prompt_embeds", 2),
    (PixArtSigmaFamily, "tiny_pixart_sigma", "prompt_embeds", 0),
])
def test_t5_padding_zero_zeroes_exactly_the_padding_tokens(family_class, fixture, key, tokenizer_index, request) -> None:
    source = ModelSource(str(request.getfixturevalue(fixture)))
    settings = dict(tokenizer_max_length=24)
    plain = _batch(family_class(SimpleNamespace(**settings, t5_padding="unmodified")), source, PROMPTS)[key]
    zeroed = _batch(family_class(SimpleNamespace(**settings, t5_padding="zero")), source, PROMPTS)[key]
    tokenizer = family_class().load_text_encoders(source).tokenizers[tokenizer_index]
    padding = _padding(tokenizer, PROMPTS, 24)
    assert padding.any() and (~padding).any()
    # T5 gives padding tokens non-zero states; zero leaves the prompt's own tokens alone.
    assert plain[padding].abs().sum() > 0
    assert torch.equal(zeroed[padding], torch.zeros_like(zeroed[padding]))
    assert torch.equal(zeroed[~padding], plain[~padding])


@pytest.mark.parametrize("family_class, fixture, key, default", [
    (FluxFamily, "tiny_flux", "prompt_embeds", 512),
    (SD3Family, "tiny_sd3", "t5_prompt_embeds", 256),
    (PixArtSigmaFamily, "tiny_pixart_sigma", "prompt_embeds", 300),
])
def test_tokenizer_max_length_sets_the_t5_sequence(family_class, fixture, key, default, request) -> None:
    source = ModelSource(str(request.getfixturevalue(fixture)))
    short = family_class(SimpleNamespace(tokenizer_max_length=7))
    assert _batch(short, source, PROMPTS)[key].shape[1] == 7
    assert _batch(family_class(SimpleNamespace(tokenizer_max_length=None)), source, ["red"])[key].shape[1] == default
    # The memory estimate's example batch has the same length.
    config = SimpleNamespace(joint_attention_dim=8, pooled_projection_dim=4, caption_channels=8)
    assert short.example_text_batch(config, 1)[key].shape[1] == 7


def test_sd3_uncond_behaviours_zero_the_empty_prompt_only(tiny_sd3: Path) -> None:
    source = ModelSource(str(tiny_sd3))

    def encoded(clip: str, t5) -> dict[str, torch.Tensor]:
        family = SD3Family(SimpleNamespace(sd3_clip_uncond_behaviour=clip, sd3_t5_uncond_behaviour=t5))
        return _batch(family, source, ["", "red"])

    stock = encoded("empty_string", None)
    assert all(stock[name][0].abs().sum() > 0 for name in stock)  # the empty string's own encoding
    clip_zero = encoded("zero", "empty_string")
    assert torch.equal(clip_zero["clip_prompt_embeds"][0], torch.zeros_like(stock["clip_prompt_embeds"][0]))
    assert torch.equal(clip_zero["pooled_prompt_embeds"][0], torch.zeros_like(stock["pooled_prompt_embeds"][0]))
    assert torch.equal(clip_zero["t5_prompt_embeds"][0], stock["t5_prompt_embeds"][0])
    t5_zero = encoded("empty_string", "zero")
    assert torch.equal(t5_zero["t5_prompt_embeds"][0], torch.zeros_like(stock["t5_prompt_embeds"][0]))
    assert torch.equal(t5_zero["clip_prompt_embeds"][0], stock["clip_prompt_embeds"][0])
    # Unset, the T5 behaviour follows the CLIP one.
    both = encoded("zero", None)
    assert all(torch.equal(both[name][0], torch.zeros_like(both[name][0])) for name in both)
    # A real caption is never touched.
    for result in (clip_zero, t5_zero, both):
        assert all(torch.equal(result[name][1], stock[name][1]) for name in stock)


def test_flux_attention_mask_hides_the_t5_padding_from_the_image(tiny_flux: Path) -> None:
    source = ModelSource(str(tiny_flux))
    transformer = FluxFamily().load_denoiser(source).eval()
    noisy = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([300.0, 700.0])

    def image_output(masked: bool, disturb_padding: bool) -> torch.Tensor:
        family = FluxFamily(SimpleNamespace(tokenizer_max_length=24, flux_attention_masked_training=masked))
        family.denoiser_loaded(transformer)
        batch = _batch(family, source, PROMPTS)
        padding = _padding(family.load_text_encoders(source).tokenizers[1], PROMPTS, 24)
        if masked:
            assert torch.equal(batch["prompt_attention_mask"].bool(), ~padding)  # cached beside the embeds
        else:
            assert "prompt_attention_mask" not in batch
        if disturb_padding:
            noise = torch.randn(batch["prompt_embeds"].shape, generator=torch.Generator().manual_seed(1))
            batch["prompt_embeds"] = torch.where(padding[..., None], noise * 10, batch["prompt_embeds"])
        inputs = family.model_inputs(batch, noisy, timesteps)
        assert ("joint_attention_kwargs" in inputs) == masked
        with torch.no_grad():
            return family.prediction(transformer(**inputs), noisy)

    # Masked, what the padding tokens hold cannot reach the image; unmasked it does.
    assert torch.allclose(image_output(True, False), image_output(True, True), atol=1e-5)
    assert not torch.allclose(image_output(False, False), image_output(False, True), atol=1e-3)
    assert not torch.allclose(image_output(True, False), image_output(False, False), atol=1e-3)


@pytest.mark.parametrize("family_class, settings", [
    (FluxFamily, {"t5_padding": "zero"}),
    (FluxFamily, {"tokenizer_max_length": 64}),
    (FluxFamily, {"flux_attention_masked_training": True}),
    (SD3Family, {"t5_padding": "zero"}),
    (SD3Family, {"tokenizer_max_length": 64}),
    (SD3Family, {"sd3_clip_uncond_behaviour": "zero"}),
    (SD3Family, {"sd3_t5_uncond_behaviour": "zero"}),
    (PixArtSigmaFamily, {"t5_padding": "zero"}),
    (PixArtSigmaFamily, {"tokenizer_max_length": 64}),
])
def test_each_setting_enters_the_text_cache_key(family_class, settings, tmp_path: Path) -> None:
    source = ModelSource(str(tmp_path))
    defaults = SimpleNamespace(**family_class.text_setting_defaults)
    changed = SimpleNamespace(**{**family_class.text_setting_defaults, **settings})
    stock = text_encoder_identity(source, family_class(defaults))
    assert text_encoder_identity(source, family_class(changed)) != stock
    # At the defaults the key is what it was before these options existed: old caches stay valid.
    assert family_class(defaults).text_settings() == "" and stock == text_encoder_identity(source, family_class())


@pytest.mark.parametrize("flags, named", [
    (["--tokenizer_max_length", "600"], "--tokenizer_max_length"),
    (["--t5_padding", "pad"], "--t5_padding"),
    (["--sd3_clip_uncond_behaviour", "none"], "--sd3_clip_uncond_behaviour"),
])
def test_bad_values_are_refused_naming_the_option(flags: list[str], named: str, tmp_path: Path) -> None:
    argv = ["--model_family", "sd3", "--pretrained_model_name_or_path", "some/model", "--output_dir", "out",
            "--data_backend_config", "mdb.json", *flags]
    with pytest.raises(ConfigError, match=named):
        load_config(argv, env={}, cwd=tmp_path)


@pytest.mark.slow
def test_flux_trains_with_masked_zero_padded_short_t5_prompts(tmp_path: Path, tiny_flux: Path) -> None:
    """The options reach the cache and the training step through the real trainer."""
    from family_harness import train_in_process, write_two_class_project

    from simpletuner.caching.keys import text_key
    from simpletuner.caching.store import TensorStore
    from simpletuner.config.loader import load_config
    from simpletuner.families.registry import get_family

    root = write_two_class_project(tmp_path, size=32, per_class=2)
    flags = ("--model_type", "lora", "--lora_rank", "2", "--train_batch_size", "2", "--max_train_steps", "2",
             "--flux_attention_masked_training", "--t5_padding", "zero", "--tokenizer_max_length", "16")
    output = train_in_process(root, tiny_flux, "flux", *flags)
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    config = load_config(["--model_family", "flux", "--pretrained_model_name_or_path", str(tiny_flux),
                          "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(output), *flags],
                         env={}, cwd=root)
    identity = text_encoder_identity(ModelSource(str(tiny_flux)), get_family("flux", config), config)
    entry = TensorStore(root / "cache/text").load(text_key("red", identity))
    assert entry is not None and entry["prompt_embeds"].shape[0] == 16
    padding = entry["prompt_attention_mask"] == 0
    assert padding.any() and entry["prompt_embeds"][padding].abs().sum() == 0


def test_flux_validation_renders_with_the_mask_it_trained_with(tiny_flux: Path) -> None:
    from diffusers import FluxPipeline

    source = ModelSource(str(tiny_flux))
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    pipeline.set_progress_bar_config(disable=True)

    def render(masked: bool, disturb_padding: bool):
        family = FluxFamily(SimpleNamespace(tokenizer_max_length=24, flux_attention_masked_training=masked,
                                            validation_guidance=3.5, validation_guidance_real=1.0))
        entry = _batch(family, source, ["red"])
        if disturb_padding:
            padding = _padding(family.load_text_encoders(source).tokenizers[1], ["red"], 24)
            noise = torch.randn(entry["prompt_embeds"].shape, generator=torch.Generator().manual_seed(1))
            entry["prompt_embeds"] = torch.where(padding[..., None], noise * 10, entry["prompt_embeds"])
        inputs = family.validation_inputs(entry, None)
        inputs.update(height=32, width=32, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(family.render_validation(pipeline, inputs))

    assert torch.allclose(render(True, False), render(True, True), atol=1e-5)
    assert not torch.allclose(render(False, False), render(False, True), atol=1e-3)
