"""The run's options applied to a DDPM-style noise schedule.

``--prediction_type`` changes what the denoiser is trained to predict.
``--rescale_betas_zero_snr`` follows Lin et al., 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed" (arXiv:2305.08891): the betas are
rescaled so that the last timestep is pure noise (``alphas_cumprod[-1] == 0``,
diffusers' ``rescale_zero_terminal_snr``), and sampling uses "trailing"
timestep spacing so that it starts from that last timestep.  Spacing does not
change training (timesteps are drawn uniformly from all of them); it matters
for the scheduler a fully fine-tuned pipeline is saved with, which is why
:func:`inference_scheduler` sets it.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from simpletuner.errors import ConfigError


def has_beta_schedule(scheduler: Any) -> bool:
    """True for DDPM-style schedulers (betas, alphas_cumprod); false for flow matching."""
    return "beta_schedule" in scheduler.config


def training_noise_scheduler(scheduler: Any, config: Any) -> Any:
    """The training scheduler with ``--prediction_type`` and ``--rescale_betas_zero_snr`` applied."""
    if config.prediction_type:
        scheduler.register_to_config(prediction_type=config.prediction_type)
    if getattr(config, "rescale_betas_zero_snr", False):
        if not has_beta_schedule(scheduler):
            raise ConfigError(
                "--rescale_betas_zero_snr rescales a DDPM beta schedule; this model family trains "
                "with flow matching, which has none"
            )
        # The betas are computed at construction, so the scheduler is rebuilt.
        scheduler = type(scheduler).from_config(
            scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing"
        )
    return scheduler


def _can_rescale(scheduler_class: type) -> bool:
    return "rescale_betas_zero_snr" in inspect.signature(scheduler_class.__init__).parameters


def inference_scheduler(scheduler: Any, prediction_type: Optional[str], zero_snr: bool) -> Any:
    """The pipeline scheduler a full fine-tune is saved with, so it samples as it was trained.

    Schedulers that cannot rescale their betas (PNDM, SD 1.x's default, which
    also has no ``sample`` prediction) are replaced by DDIM with the same betas.
    """
    if not has_beta_schedule(scheduler) or not (prediction_type or zero_snr):
        return scheduler
    scheduler_class = type(scheduler)
    if not _can_rescale(scheduler_class) and (zero_snr or prediction_type == "sample"):
        from diffusers import DDIMScheduler

        scheduler_class = DDIMScheduler
    changes: dict[str, Any] = {}
    if "clip_sample" not in scheduler.config:
        changes["clip_sample"] = False  # latents are not clipped (DDIM defaults to clipping)
    if prediction_type:
        changes["prediction_type"] = prediction_type
    if zero_snr:
        changes.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return scheduler_class.from_config(scheduler.config, **changes)
