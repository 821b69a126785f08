"""Flow-matching training (rectified flow), as SD3 and Flux are trained.

The noisy input is the straight line between data and noise,
``x_sigma = (1 - sigma) * x0 + sigma * noise``, and the denoiser predicts the
velocity along it, ``noise - x0`` (diffusers' convention, the negative of
the SD3 paper's).  Sigmas are drawn with diffusers'
``compute_density_for_timestep_sampling`` and weighted with
``compute_loss_weighting_for_sd3`` (Esser et al. 2024, "Scaling Rectified
Flow Transformers for High-Resolution Image Synthesis", arXiv:2403.03206,
section 3.1), then optionally shifted toward noise, by a fixed factor or by
one chosen from the image's token count as Flux does
(``diffusers.pipelines.flux.pipeline_flux.calculate_shift``).

SimpleTuner's own draws are offered too: a Beta(alpha, beta) distribution
(``--flux_use_beta_schedule``), plain uniform sigmas
(``--flux_use_uniform_schedule``), and a scale on the logit-normal's logit
(``--flow_matching_sigmoid_scale``: ``sigmoid(scale * z)``).

Offset noise and input perturbation (:mod:`noise_tricks`) carry over
unchanged: the line starts from the offset noise and the velocity is taken
from it, while a perturbed noise moves only the input off the line.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from simpletuner.training.noise_tricks import NoiseTricks, run_option
from simpletuner.training.objectives import LossShape, NoisedBatch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift * s / (1 + (shift - 1) * s)``: the SD3 paper's timestep shift (eq. 23).

    Equals ``FlowMatchEulerDiscreteScheduler``'s static shift and, for
    ``shift = exp(mu)``, its exponential ``time_shift(mu, 1, s)``.
    """
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_shift_mu(
    image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float
) -> float:
    """mu, linear in the image's token count (FluxPipeline's ``calculate_shift``)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def resolution_shift(
    image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float
) -> float:
    """The shift factor ``exp(mu)`` for an image of ``image_seq_len`` tokens."""
    return math.exp(resolution_shift_mu(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift))


def flow_noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise`` (``FlowMatchEulerDiscreteScheduler.scale_noise``)."""
    sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1)))
    return (1 - sigmas) * latents + sigmas * noise


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity ``d x_sigma / d sigma = noise - x0`` that the denoiser predicts."""
    return noise - latents


def sample_sigmas(
    weighting_scheme: str,
    batch_size: int,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    sigmoid_scale: float = 1.0,
) -> torch.Tensor:
    """Sigmas in [0, 1] drawn as the weighting scheme says (uniform for most schemes).

    ``logit_normal`` is ``sigmoid(sigmoid_scale * z)``, ``z ~ N(logit_mean, logit_std)``:
    diffusers' draw (the same generator call) when the scale is 1, SimpleTuner's
    ``sigmoid(scale * randn)`` when the mean is 0 and the spread 1.
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if weighting_scheme == "logit_normal":
        z = torch.normal(mean=logit_mean, std=logit_std, size=(batch_size,), device="cpu", generator=generator)
        return torch.sigmoid(sigmoid_scale * z)

    return compute_density_for_timestep_sampling(
        weighting_scheme=weighting_scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        generator=generator,
    )


def beta_sigmas(alpha: float, beta: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Sigmas drawn from Beta(alpha, beta), reproducibly from ``generator``.

    torch's Beta sampler takes no generator, so numpy's is seeded from it: a
    resumed run, whose generator state is restored, draws the same sigmas.
    """
    import numpy as np

    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, beta, size=batch_size)).float()


def draw_sigmas(config: Any, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The run's sigma draw: SimpleTuner's Beta or uniform schedule when asked, else the weighting scheme's."""
    if run_option(config, "flux_use_beta_schedule"):
        return beta_sigmas(run_option(config, "flux_beta_schedule_alpha"),
                           run_option(config, "flux_beta_schedule_beta"), batch_size, generator)
    if run_option(config, "flux_use_uniform_schedule"):
        return torch.rand((batch_size,), generator=generator)
    return sample_sigmas(
        config.flow_weighting_scheme, batch_size, generator, config.flow_logit_mean, config.flow_logit_std,
        config.flow_mode_scale, run_option(config, "flow_matching_sigmoid_scale"),
    )


def noise_ratio(sigmas: torch.Tensor) -> torch.Tensor:
    """sigma / (1 - sigma): noise over signal on the flow line (the DDPM sigma's counterpart)."""
    return sigmas / (1 - sigmas)


def loss_weights(weighting_scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights (ones except for ``sigma_sqrt`` and ``cosmap``)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas)


class FlowMatchingObjective:
    """Draws noise and sigmas from the trainer's generator; velocity target.

    ``tokens_per_latent_pixel`` converts a latent's height x width into the
    denoiser's image sequence length (1/4 for 2x2 patches or packing), which
    resolution-dependent shifting needs.
    """

    def __init__(self, noise_scheduler: Any, config: Any, tokens_per_latent_pixel: float = 0.25) -> None:
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        self.config = config
        self.tokens_per_latent_pixel = tokens_per_latent_pixel
        self.tricks = NoiseTricks.from_config(config)
        self.shape = LossShape.from_config(config)

    def shift_for(self, latents: torch.Tensor) -> float:
        config = self.config
        if not config.flow_resolution_shifting:
            return config.flow_shift
        seq_len = int(latents.shape[-2] * latents.shape[-1] * self.tokens_per_latent_pixel)
        return resolution_shift(
            seq_len, config.flow_base_seq_len, config.flow_max_seq_len, config.flow_base_shift, config.flow_max_shift
        )

    @property
    def loss_type(self) -> str:
        return self.shape.loss_type

    def noise(self, latents: torch.Tensor, generator: torch.Generator) -> NoisedBatch:
        config = self.config
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        sigmas = draw_sigmas(config, latents.shape[0], generator)
        sigmas = shift_sigmas(sigmas, self.shift_for(latents)).to(latents.device)
        drawn = self.tricks.apply(noise, generator)
        timesteps = sigmas * self.num_train_timesteps
        return NoisedBatch(
            noisy=flow_noisy(latents, drawn.input_noise, sigmas.to(latents.dtype)),
            timesteps=timesteps,
            target=flow_target(latents, drawn.target_noise),
            weights=self.shape.scaled(loss_weights(config.flow_weighting_scheme, sigmas), latents.shape[0]),
            huber_c=self.shape.c(timesteps, self.num_train_timesteps, noise_ratio(sigmas)),
        )

    def noised_at(self, latents: torch.Tensor, noise: torch.Tensor, positions: torch.Tensor) -> NoisedBatch:
        """The batch at given noise and sigmas (``positions``, in [0, 1)): no shift, nothing drawn.

        The shift and the weighting scheme's density only decide which sigmas
        training visits; the evaluation loss is measured at fixed ones, with
        the training loss's target and weights.
        """
        sigmas = positions.float().to(latents.device)
        noise = noise.to(latents.device, latents.dtype)
        timesteps = sigmas * self.num_train_timesteps
        return NoisedBatch(
            noisy=flow_noisy(latents, noise, sigmas.to(latents.dtype)),
            timesteps=timesteps,
            target=flow_target(latents, noise),
            weights=self.shape.scaled(loss_weights(self.config.flow_weighting_scheme, sigmas), latents.shape[0]),
            huber_c=self.shape.c(timesteps, self.num_train_timesteps, noise_ratio(sigmas)),
        )
