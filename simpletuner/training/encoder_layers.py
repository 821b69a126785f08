"""--freeze_encoder: which transformer layers of a trained text encoder stay frozen.

SimpleTuner v1.x's options, with the meaning its help text gives them.  A
CLIP text encoder's layers are ``text_model.encoder.layers.<i>`` (counted
from 0); with ``--freeze_encoder`` on, these layers take no updates:

* ``before``: the layers before ``--freeze_encoder_before`` (i < before);
* ``after``: the layers after ``--freeze_encoder_after`` (i > after);
* ``between``: the layers from before to after, both included, leaving the
  outer ones trainable;
* ``outside``: the layers outside that range, leaving the inner ones trainable.

The embeddings, final layer norm and projection are not layers and are never
frozen by this.  With a LoRA it is the LoRA weights inside frozen layers that
stay at their initial (zero) contribution; with a full fine-tune, the
layers' own weights.  The defaults (after, 17) leave SD 1.x's 12-layer
encoder whole and freeze the top layers of deeper ones (SD 2.x's 23,
SDXL's second encoder's 32), as SimpleTuner does.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def layer_frozen(index: int, strategy: str, before: int, after: int) -> bool:
    """Whether layer ``index`` is frozen under ``strategy``."""
    if strategy == "before":
        return index < before
    if strategy == "after":
        return index > after
    if strategy == "between":
        return before <= index <= after
    if strategy == "outside":
        return index < before or index > after
    raise ValueError(f"unknown freeze strategy {strategy!r}")


def freeze_encoder_layers(encoder: torch.nn.Module, config: Any) -> list[int]:
    """Stop the trainable weights of ``encoder``'s frozen layers from training; returns those layers' indices."""
    if not config.freeze_encoder:
        return []
    frozen: set[int] = set()
    for name, parameter in encoder.named_parameters():
        match = _LAYER.search(name)
        if match is None or not parameter.requires_grad:
            continue
        index = int(match.group(1))
        if layer_frozen(index, config.freeze_encoder_strategy, config.freeze_encoder_before,
                        config.freeze_encoder_after):
            parameter.requires_grad_(False)
            frozen.add(index)
    return sorted(frozen)
