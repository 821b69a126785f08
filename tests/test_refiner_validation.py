"""Validation images of a stage are drawn through diffusers' own chaining:
the base stage stops at ``denoising_end``, the refiner stage runs in
StableDiffusionXLImg2ImgPipeline from ``denoising_start`` (its input drawn by
the same weights down to the handover).  A hook on the UNet records the
timesteps each pass asks for."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simpletuner.families.base import ModelSource
from simpletuner.families.sdxl import SDXLFamily
from simpletuner.validation.pipeline import build_pipeline, load_inference_scheduler
from simpletuner.validation.render import batched, render_image

pytestmark = pytest.mark.slow  # tiny pipelines loaded and run end to end

STEPS = 10  # leading spacing, offset 1: timesteps 901, 801, ..., 1


def _draw(model: Path, **options) -> tuple[str, list[float], np.ndarray]:
    config = SimpleNamespace(validation_guidance=3.0, validation_guidance_rescale=0.0,
                             validation_noise_scheduler=None, prediction_type=None, rescale_betas_zero_snr=False,
                             **options)
    family = SDXLFamily(config)
    source = ModelSource(base=str(model))
    text = family.load_text_encoders(source)
    positive, negative = family.encode_text(text, ["a red square", ""])
    unet = family.load_denoiser(source).eval()
    seen: list[float] = []
    unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(float(args[1] if len(args) > 1 else kwargs["timestep"])),
        with_kwargs=True)
    pipeline = build_pipeline(family, unet, family.load_vae(source), load_inference_scheduler(family, source, config))
    prepare = pipeline.prepare_latents

    def recording_prepare(*args, **kwargs):
        # img2img's last argument says whether its input is noised (False from denoising_start);
        # text-to-image's is the latents given (None: drawn from noise).
        seen.append("start" if args[-1] is None else f"start, noised={args[-1]}")
        return prepare(*args, **kwargs)

    pipeline.prepare_latents = recording_prepare
    cpu = torch.device("cpu")
    image = render_image(pipeline, family, batched(positive, cpu, torch.float32), batched(negative, cpu, torch.float32),
                         48, 32, seed=3, steps=STEPS)
    assert image.size == (48, 32)
    return type(pipeline).__name__, seen, np.asarray(image)


def test_the_base_stage_stops_where_the_refiner_takes_over(tiny_sdxl: Path) -> None:
    name, seen, _ = _draw(tiny_sdxl, refiner_training=True, refiner_training_strength=0.35,
                          refiner_training_invert_schedule=True)
    assert name == "StableDiffusionXLPipeline"
    # denoising_end = 0.65: diffusers keeps timesteps >= round(1000 - 650) = 350.
    assert seen == ["start", 901.0, 801.0, 701.0, 601.0, 501.0, 401.0]
    _, whole, _ = _draw(tiny_sdxl)
    assert whole[1:] == [901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]


def test_the_refiner_stage_continues_from_denoising_start_in_img2img(tiny_sdxl: Path) -> None:
    name, seen, image = _draw(tiny_sdxl, refiner_training=True, refiner_training_strength=0.35)
    assert name == "StableDiffusionXLImg2ImgPipeline"
    # The handed-over latents (from noise, ending at denoising_end), then the
    # refiner's own part from denoising_start on those latents, not noised again.
    assert seen == ["start, noised=True", 901.0, 801.0, 701.0, 601.0, 501.0, 401.0,
                    "start, noised=False", 301.0, 201.0, 101.0, 1.0]
    assert image.std() > 0
