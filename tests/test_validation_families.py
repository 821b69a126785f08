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

FAMILIES = ("sdxl", "legacy", "kolors", "pixart_sigma", "sd3", "flux")


def _config(**changes):
    values = dict(validation_guidance=3.0, validation_guidance_rescale=0.0, validation_guidance_real=1.0,
                  validation_no_cfg_until_timestep=2, validation_guidance_skip_layers=None,
                  validation_noise_scheduler=None, sd3_skip_t5=False, flux_guidance_value=1.0,
                  prediction_type=None, rescale_betas_zero_snr=False, lora_format="diffusers")
    values.update(changes)
    return SimpleNamespace(**values)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_pipeline_draws_from_cached_embeds(name: str, request: pytest.FixtureRequest) -> None:
    model: Path = request.getfixturevalue(f"tiny_{name}")
    family = get_family(name, _config())
    source = ModelSource(base=str(model))
    text = family.load_text_encoders(source)
    red, blue, negative = family.encode_text(text, ["a red square", "a blue circle", "blurry"])
    pipeline = build_pipeline(family, family.load_denoiser(source).eval(), family.load_vae(source),
                              load_inference_scheduler(family, source, family.config))
    assert type(pipeline).__name__ == family.pipeline_class_name
    assert all(getattr(pipeline, c, None) is None for c in ("text_encoder", "text_encoder_2", "text_encoder_3"))

    def draw(entry: dict) -> np.ndarray:
        image = render_image(pipeline, family, batched(entry, torch.device("cpu"), torch.float32),
                             batched(negative, torch.device("cpu"), torch.float32), 48, 32, seed=3, steps=1)
        assert image.size == (48, 32)
        return np.asarray(image).astype(int)

    first = draw(red)
    assert np.array_equal(first, draw(red)), "the same seed must draw the same image"
    assert not np.array_equal(first, draw(blue)), "the prompt's embeds did not reach the model"
