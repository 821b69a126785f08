"""``--vae_dtype``: the dtype the VAE encodes the latent cache in.

Latents encoded in another dtype are different latents, so the dtype is part
of the VAE's identity in the latent cache key.  It is added only when it
differs from the family's own choice (fp32), so caches made before the option
existed, or with ``--vae_dtype default`` or ``fp32``, keep their keys.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

# What ``default`` means: the dtype ModelFamily.load_vae has always used.
FAMILY_VAE_DTYPE = torch.float32
_DTYPES = {"default": FAMILY_VAE_DTYPE, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def vae_dtype(config: Any) -> torch.dtype:
    """The dtype the VAE is loaded in for encoding."""
    return _DTYPES[config.vae_dtype]


def vae_identity(source: Any, config: Any) -> str:
    """The VAE's identity for latent cache keys: its files, plus the dtype when not the family's own."""
    identity = source.identity("vae")
    dtype = vae_dtype(config)
    if dtype == FAMILY_VAE_DTYPE:
        return identity
    return f"{identity}|dtype:{str(dtype).removeprefix('torch.')}"


def warn_if_vae_overflows(family: Any, source: Any, config: Any) -> None:
    """Say so when fp16 is asked of a VAE known to overflow in fp16 (the stock SDXL VAE)."""
    if vae_dtype(config) != torch.float16 or not family.vae_overflows_in_fp16:
        return
    if "vae" in source.overrides:
        return  # a replacement VAE, e.g. an fp16-fixed one: trust the user's choice
    logger.warning(
        "--vae_dtype fp16: the stock %s VAE overflows in fp16 and can produce NaN latents; use "
        "--vae_dtype bf16, or an fp16-safe VAE such as madebyollin/sdxl-vae-fp16-fix "
        "(--pretrained_vae_model_name_or_path)", family.name,
    )
