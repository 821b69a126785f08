"""Every family draws validation images through its own stock pipeline, from cached text embeds.

One cheap pass per family (tiny model, one denoising step, 32 px): the text
embeds are what the family's ``encode_text`` puts in the cache, the pipeline is
built around the loaded denoiser with no text encoders (validation/pipeline.py),
and the image must come out at the size asked for and depend on the prompt.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.validation.pipeline import build_pipeline, load_inference_scheduler
from simpletuner.validation.render import batched, render_image

pytestmark = pytest.mark.slow  # six tiny pipelines

FAMILIES = ("sdxl", "legacy", "kolors", "pixart_sigma", "sd3", "flux")


def _config(**changes):
    values = dict(validation_guidance=3.0, validation_guidance_rescale=0.0, validation_guidance_real=1.0,
                  validation_no_cfg_until_timestep=2, validation_guidance_skip_layers=None,
                  validation_noise_scheduler=None, validation_guidance_skip_scale=2.8,
                  validation_guidance_skip_layers_start=0.01, validation_guidance_skip_layers_stop=0.2,
                  sd3_skip_t5=False, flux_guidance_value=1.0,
                  prediction_type=None, rescale_betas_zero_snr=False, lora_format="diffusers")
    values.update(changes)
    return SimpleNamespace(**values)


def drawer(name: str, model: Path, **options):
    """(draw(prompt, seed) -> pixels, pipeline) for the family's pipeline around its tiny model."""
    family = get_family(name, _config(**options))
    source = ModelSource(base=str(model))
    text = family.load_text_encoders(source)
    prompts = ["a red square", "a blue circle", "blurry"]
    embeds = dict(zip(prompts, family.encode_text(text, prompts)))
    pipeline = build_pipeline(family, family.load_denoiser(source).eval(), family.load_vae(source),
                              load_inference_scheduler(family, source, family.config))

    def draw(prompt: str, steps: int = 1) -> np.ndarray:
        cpu = torch.device("cpu")
        image = render_image(pipeline, family, batched(embeds[prompt], cpu, torch.float32),
                             batched(embeds["blurry"], cpu, torch.float32), 48, 32, seed=3, steps=steps)
        assert image.size == (48, 32)
        return np.asarray(image).astype(int)

    return draw, pipeline


@pytest.mark.parametrize("name", FAMILIES)
def test_family_pipeline_draws_from_cached_embeds(name: str, request: pytest.FixtureRequest) -> None:
    draw, pipeline = drawer(name, request.getfixturevalue(f"tiny_{name}"))
    assert type(pipeline).__name__ == get_family(name).pipeline_class_name
    assert all(getattr(pipeline, c, None) is None for c in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    first = draw("a red square")
    assert np.array_equal(first, draw("a red square")), "the same seed must draw the same image"
    assert not np.array_equal(first, draw("a blue circle")), "the prompt's embeds did not reach the model"


def test_flux_real_cfg_and_its_unguided_first_steps(tiny_flux: Path) -> None:
    plain, _ = drawer("flux", tiny_flux)
    guided, _ = drawer("flux", tiny_flux, validation_guidance_real=4.0, validation_no_cfg_until_timestep=0)
    late, _ = drawer("flux", tiny_flux, validation_guidance_real=4.0, validation_no_cfg_until_timestep=1)
    never, _ = drawer("flux", tiny_flux, validation_guidance_real=4.0, validation_no_cfg_until_timestep=3)
    images = {name: draw("a red square", steps=3) for name, draw in
              (("plain", plain), ("guided", guided), ("late", late), ("never", never))}
    assert not np.array_equal(images["plain"], images["guided"]), "real CFG changed nothing"
    assert not np.array_equal(images["guided"], images["late"]), "the unguided first step changed nothing"
    assert not np.array_equal(images["late"], images["plain"])
    # Unguided for all three steps: the split run is exactly the plain one.
    assert np.array_equal(images["never"], images["plain"])


def test_sd3_skip_layer_guidance(tiny_sd3: Path) -> None:
    plain, _ = drawer("sd3", tiny_sd3)
    skipping, _ = drawer("sd3", tiny_sd3, validation_guidance_skip_layers=["0"], validation_guidance_skip_scale=3.0,
                         validation_guidance_skip_layers_start=0.0, validation_guidance_skip_layers_stop=1.0)
    assert not np.array_equal(plain("a red square", steps=2), skipping("a red square", steps=2))
