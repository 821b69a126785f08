"""What the T5-encoding families (SD3, Flux, PixArt-Sigma) share about T5 prompts.

--tokenizer_max_length sets how many tokens T5 keeps (each family's pipeline
default otherwise), and --t5_padding zero zeroes the embeddings of the padding
tokens, which T5 otherwise fills with values that depend on the prompt.  Both
change the cached embeds, so :func:`settings_identity` names them for the
text-embed cache key.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

# The longest T5 sequence the SD3 and Flux pipelines' encode_prompt accepts.
PIPELINE_T5_LIMIT = 512


def t5_length(option: Callable[[str, Any], Any], family_default: int) -> int:
    """--tokenizer_max_length, else the family's own sequence length."""
    return int(option("tokenizer_max_length", None) or family_default)


def t5_attention_mask(tokenizer: Any, prompts: list[str], length: int) -> torch.Tensor:
    """The padding mask of ``prompts`` tokenized exactly as the pipelines' T5 encoding does."""
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    return tokens.attention_mask


def zero_padding(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``embeds`` (batch, tokens, width) with the padding tokens' rows set to zero."""
    return embeds * mask.to(embeds.device, embeds.dtype).unsqueeze(-1)


def settings_identity(option: Callable[[str, Any], Any], defaults: dict[str, Any]) -> str:
    """The settings among ``defaults`` that differ from their default, for the cache key.

    Only changed settings are named, so caches made before an option existed
    (necessarily with its default) stay valid.
    """
    changed = {name: option(name, default) for name, default in defaults.items()}
    return "".join(f"|{name}={value}" for name, value in sorted(changed.items()) if value != defaults[name])
