"""Applying ``--attention_mechanism`` and ``--fused_qkv_projections`` to the loaded denoiser.

On a family whose attention goes through diffusers' dispatcher (Flux), the
backend is set on each attention processor (its ``_attention_backend``),
which is what diffusers' ``ModelMixin.set_attention_backend`` does too;
that method also changes the dispatcher's process-wide active backend,
which would leak into every other model of the process, so it is not used.
On the other families only ``xformers`` applies, through diffusers' own
xformers processors (``enable_xformers_memory_efficient_attention``).

SageAttention may be limited to training or to validation
(``--sageattention_usage``); validation switches the backend around its
renders with :func:`validation_attention`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from simpletuner.attention import fused_qkv
from simpletuner.attention.backends import DEFAULT, MECHANISMS_BY_NAME, SAGE_TRAINING_WARNING, usage_phases
from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)


def prepare_attention(denoiser: torch.nn.Module, config: Any, family: Any) -> None:
    """Fuse the projections (before any adapter targets them) and pick the training backend."""
    if config.fused_qkv_projections:
        count = fused_qkv.fuse(denoiser)
        logger.info("fused the q/k/v projections of %d attention layers", count)
    training, _ = usage_phases(config.attention_mechanism, config.sageattention_usage)
    if training and config.attention_mechanism == "sageattention":
        logger.warning(SAGE_TRAINING_WARNING.format(usage=config.sageattention_usage))
    set_mechanism(denoiser, config.attention_mechanism if training else DEFAULT, family)


def set_mechanism(denoiser: torch.nn.Module, name: str, family: Any) -> None:
    """Make ``denoiser`` compute attention with the mechanism called ``name``."""
    mechanism = MECHANISMS_BY_NAME[name]
    if getattr(family, "attention_dispatch", False):
        backend = _backend(mechanism.backend)
        for processor in dispatching_processors(denoiser):
            processor._attention_backend = backend
    elif name == "xformers":
        denoiser.enable_xformers_memory_efficient_attention()
    elif name != DEFAULT:  # validation refuses this; a bug if it ever gets here
        raise ConfigError(f"--attention_mechanism={name} does not apply to --model_family {family.name}")


def dispatching_processors(denoiser: torch.nn.Module) -> list[Any]:
    """The attention processors that hand attention to diffusers' dispatcher."""
    processors = (getattr(module, "processor", None) for module in denoiser.modules())
    return [p for p in processors if p is not None and hasattr(p, "_attention_backend")]


def _backend(value: Any) -> Any:
    """diffusers' backend name, after its own check that the library is there (None: its default)."""
    if value is None:
        return None
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    backend = AttentionBackendName(value)
    try:
        _check_attention_backend_requirements(backend)
    except RuntimeError as error:  # validation checked the package; this is diffusers' stricter word
        raise ConfigError(f"--attention_mechanism: {error}") from None
    return backend


@contextmanager
def validation_attention(denoiser: torch.nn.Module, config: Any, family: Any) -> Iterator[None]:
    """Validation renders with the inference mechanism, when --sageattention_usage makes it differ."""
    training, inference = usage_phases(config.attention_mechanism, config.sageattention_usage)
    if training == inference:
        yield
        return
    set_mechanism(denoiser, config.attention_mechanism if inference else DEFAULT, family)
    try:
        yield
    finally:
        set_mechanism(denoiser, config.attention_mechanism if training else DEFAULT, family)
