"""The denoiser as the run will train it, built on the meta device.

Built from the component's ``config.json`` with the run's adapter attached,
it has every module and parameter shape of the real thing and no storage,
so the estimate can count what the adapter trains, which weights sit in
Linear layers (what quantisation shrinks) and trace the forward pass.
With --fused_qkv_projections it is fused as the trainer fuses it, before
the adapter, so the LoRA lands on the fused Linears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from simpletuner.attention import fused_qkv
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.logs import quieted


@dataclass
class Skeleton:
    module: torch.nn.Module
    frozen_parameters: int
    linear_weight_parameters: int  # frozen nn.Linear weights: what weight quantisation shrinks
    trained_parameters: int
    largest_quantisable_linear: int = 0  # weights of the largest Linear the family lets quantisation touch
    largest_quantisable_conv: int = 0  # the same for Conv2d (quanto quantises those too)


def build_skeleton(family: ModelFamily, source: ModelSource, config: Any, frozen_dtype: torch.dtype) -> Optional[Skeleton]:
    """The meta-device denoiser with the run's adapter; None when its config is not on this machine."""
    import diffusers

    from simpletuner.config.model import replace
    from simpletuner.training.trainable import trainable_for

    folder = source.local_folder(family.denoiser_component)
    if folder is None or not (folder / "config.json").is_file():
        return None
    model_class = getattr(diffusers, family.denoiser_class_name)
    with torch.device("meta"):
        module = model_class.from_config(model_class.load_config(str(folder)))
    module.requires_grad_(False)
    module.to(dtype=frozen_dtype)
    family.denoiser_loaded(module)
    if getattr(config, "fused_qkv_projections", False):
        # As the trainer does before the adapter (attention/apply.py): the LoRA then
        # targets the fused Linears (one lora_A where q, k and v had three).
        fused_qkv.fuse(module)
    # The separate q/k/v weights of a fused block are views of the fused weight: no memory of their own.
    views = {id(p) for p in fused_qkv.separate_parameters(module)}
    # Weight-aware initialisations (pissa, olora) compute from real weights;
    # the default initialisation has the same shapes and needs none.
    adapter_config = replace(config, lora_init_type="default") if config.model_type == "lora" else config
    trainable = trainable_for(adapter_config, family)
    linear = _linear_weight_parameters(module) - sum(p.numel() for p in fused_qkv.separate_parameters(module)
                                                     if p.dim() == 2)
    largest = _largest_quantisable(module, torch.nn.Linear, family.quantisation_exclude)
    largest_conv = _largest_quantisable(module, torch.nn.Conv2d, family.quantisation_exclude)
    # The real run prepares the adapter again and says what it has to say
    # (a LyCORIS preset that misses, say); this shape-only copy stays quiet.
    with torch.device("meta"), quieted("simpletuner.training"):
        trainable.prepare(module)
    trained = trainable.parameters(module)
    trained_ids = {id(p) for p in trained}
    frozen = sum(p.numel() for p in module.parameters() if id(p) not in trained_ids and id(p) not in views)
    if config.model_type == "full":
        frozen, linear, largest, largest_conv = 0, 0, 0, 0
    return Skeleton(module, frozen, linear, sum(p.numel() for p in trained), largest, largest_conv)


def _linear_weight_parameters(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def _largest_quantisable(module: torch.nn.Module, kind: type, exclude: tuple[str, ...]) -> int:
    from simpletuner.quantisation.apply import excluded

    return max((m.weight.numel() for name, m in module.named_modules()
                if isinstance(m, kind) and not excluded(name, exclude)), default=0)
