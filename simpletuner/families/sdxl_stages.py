"""SDXL's two-stage (base + refiner, "mixture of experts") training.

SDXL ships as a base model that denoises the noisy part of the schedule and a
refiner that finishes the last part; diffusers chains them with the base
pipeline's ``denoising_end=f`` and the refiner's ``denoising_start=f``.  Each
stage is trained on its own part of the DDPM timesteps (SimpleTuner v1.x's
``--refiner_training`` options):

- the refiner (low noise): timesteps ``0 .. round(T * strength) - 1``;
- the base, with ``--refiner_training_invert_schedule`` (high noise):
  timesteps ``round(T * strength) .. T - 1``.

With T=1000 and strength 0.35 the refiner learns 349..0 and the base
999..350.  diffusers' cut-off for a fraction ``f`` is the timestep
``round(T - f * T)``, so both stages meet at ``f = 1 - strength``.

A model in the SDXL refiner's own layout (``requires_aesthetics_score``)
trains its design range, the last ``--refiner_training_strength`` of the
schedule (20 % by default), unless ``--sdxl_refiner_uses_full_range``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

REFINER = "refiner"
BASE = "base"


@dataclass(frozen=True)
class StageSplit:
    """One stage of a two-model chain: which part of the schedule it learns."""

    strength: float  # share of the schedule the refiner stage owns
    stage: str  # REFINER (low noise) or BASE (high noise)

    def boundary(self, num_timesteps: int) -> int:
        """First timestep of the base stage; the refiner owns those below it."""
        return round(num_timesteps * self.strength)

    def timesteps(self, num_timesteps: int) -> slice:
        """The timesteps this stage trains on, as a slice of ``range(num_timesteps)``."""
        cut = self.boundary(num_timesteps)
        return slice(0, cut) if self.stage == REFINER else slice(cut, num_timesteps)

    @property
    def handover(self) -> float:
        """diffusers' ``denoising_end`` of the base and ``denoising_start`` of the refiner."""
        return 1.0 - self.strength

    def pipeline_arguments(self) -> dict[str, float]:
        """The keyword that makes a diffusers SDXL pipeline run only this stage."""
        key = "denoising_start" if self.stage == REFINER else "denoising_end"
        return {key: self.handover}

    def describe(self, num_timesteps: int) -> str:
        span = self.timesteps(num_timesteps)
        return f"SDXL {self.stage} stage: training timesteps {span.stop - 1}..{span.start}"


def stage_split(config: Any, refiner_layout: bool = False) -> Optional[StageSplit]:
    """The stage this run trains, or None for the whole schedule."""
    strength = float(getattr(config, "refiner_training_strength", 0.2))
    if getattr(config, "refiner_training", False):
        invert = getattr(config, "refiner_training_invert_schedule", False)
        return StageSplit(strength, BASE if invert else REFINER)
    if refiner_layout and not getattr(config, "sdxl_refiner_uses_full_range", False):
        return StageSplit(strength, REFINER)
    return None


def render_stage(pipeline: Any, inputs: dict[str, Any], split: Optional[StageSplit], img2img: bool) -> Any:
    """One validation image of a stage, through diffusers' own chaining arguments.

    The base stage is the text-to-image pipeline stopped at ``denoising_end``
    (the image still holds the noise the refiner would remove).  The refiner
    stage needs the latents a base stage hands over; the run has no base model,
    so the same weights draw that part first (the img2img pipeline from blank
    latents at strength 1, i.e. from pure noise, down to the handover) and the
    refiner stage continues from there with ``denoising_start``.  A
    refiner-layout model (``img2img``: it has no text-to-image pipeline) draws
    every image that way, from blank latents at strength 1.
    """
    start = split.handover if split is not None and split.stage == REFINER else None
    end = split.handover if split is not None and split.stage == BASE else None
    if not img2img:
        return pipeline(**inputs, denoising_end=end).images[0]
    inputs = dict(inputs)
    height, width = inputs.pop("height"), inputs.pop("width")  # img2img takes the size from its image
    scale = pipeline.vae_scale_factor
    blank = torch.zeros(1, pipeline.unet.config.in_channels, height // scale, width // scale)
    if start is None:
        return pipeline(**inputs, image=blank, strength=1.0, denoising_end=end).images[0]
    handed_over = pipeline(**{**inputs, "output_type": "latent"}, image=blank, strength=1.0,
                           denoising_end=start).images
    return pipeline(**inputs, image=handed_over, denoising_start=start).images[0]
