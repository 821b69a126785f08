"""The family's stock diffusers pipeline, built around the model being trained.

Nothing is read from disk but the VAE (once per run) and the scheduler's
config: the denoiser is the live one, and text encoders are left out because
prompts arrive as embeddings from the text-embed cache.
"""

from __future__ import annotations

import inspect
from typing import Any

# --validation_noise_scheduler choice -> diffusers scheduler class.
NOISE_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def load_inference_scheduler(family: Any, source: Any, config: Any) -> Any:
    """The model's own sampler (or --validation_noise_scheduler's) set up as training was."""
    import diffusers

    from simpletuner.training.noise_schedule import inference_scheduler

    path, subfolder = source.overrides.get("scheduler", (source.base, "scheduler"))
    settings = diffusers.DDPMScheduler.load_config(path, subfolder=subfolder, revision=source.revision)
    name = NOISE_SCHEDULERS.get(config.validation_noise_scheduler or "", settings["_class_name"])
    scheduler = getattr(diffusers, name).from_config(settings)
    # A model trained with another prediction type or zero terminal SNR samples that way too.
    return inference_scheduler(scheduler, getattr(config, "prediction_type", None),
                               getattr(config, "rescale_betas_zero_snr", False))


def build_pipeline(family: Any, denoiser: Any, vae: Any, scheduler: Any) -> Any:
    """``family``'s pipeline class with ``denoiser``, ``vae`` and ``scheduler``; no text encoders."""
    pipeline_class = family.validation_pipeline_class()
    parameters = inspect.signature(pipeline_class.__init__).parameters
    components: dict[str, Any] = {name: None for name, p in parameters.items()
                                  if name != "self" and p.default is inspect.Parameter.empty}
    components.update({family.denoiser_component: denoiser, "vae": vae, "scheduler": scheduler})
    # Optional extras of some pipelines that would otherwise load or check something.
    for name, value in (("requires_safety_checker", False), ("add_watermarker", False),
                        *family.pipeline_settings().items()):
        if name in parameters:
            components[name] = value
    pipeline = pipeline_class(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
