"""Attaching and extracting LoRA adapters with PEFT."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

ADAPTER_NAME = "default"

# --lora_init_type -> peft's init_lora_weights
_INIT = {"default": True, "gaussian": "gaussian", "loftq": "loftq", "olora": "olora", "pissa": "pissa"}
# Initialisations that move part of each base weight into the adapter: the
# frozen weight becomes a residual W - scale * B0 A0, so the model still
# starts out as the base model but the base weights in memory are not the
# base model's any more.
BASE_MUTATING_INITS = ("olora", "pissa")


def add_lora(denoiser: torch.nn.Module, config: Any, target_modules: tuple[str, ...]) -> None:
    """Freeze the denoiser and give it a trainable LoRA adapter (kept in fp32)."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=lora_alpha(config),
        lora_dropout=config.lora_dropout,
        init_lora_weights=_INIT[config.lora_init_type],
        target_modules=list(target_modules),
        # DoRA: PEFT splits each weight into a trained magnitude per output
        # row and a LoRA-updated direction (saved as lora_magnitude_vector).
        use_dora=bool(getattr(config, "use_dora", False)),
    )
    from diffusers.loaders.peft import PeftAdapterMixin

    if isinstance(denoiser, PeftAdapterMixin):
        denoiser.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
    else:
        # Models without diffusers' PeftAdapterMixin (PixArt's transformer, the
        # transformers text encoders, whose add_adapter wants a newer PEFT):
        # PEFT's injection, which is what diffusers' add_adapter does underneath.
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config, denoiser, adapter_name=ADAPTER_NAME)
    for parameter in denoiser.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def lora_alpha(config: Any) -> float:
    """The alpha the adapter is trained with (PEFT's default is alpha = rank)."""
    return config.lora_alpha if config.lora_alpha is not None else config.lora_rank


def lora_scale(config: Any) -> float:
    """PEFT's multiplier of B A in the forward pass."""
    return lora_alpha(config) / config.lora_rank


def trainable_parameters(denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in denoiser.parameters() if p.requires_grad]


def adapter_state(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT's key names (what resuming needs)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}


def load_adapter_state(denoiser: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint adapter has keys this model lacks: {unexpected[:3]}")


def diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT-named adapter state in diffusers' key layout, for save_lora_weights."""
    from diffusers.utils import convert_state_dict_to_diffusers

    return convert_state_dict_to_diffusers(state)


def diffusers_lora_state(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' key layout, for save_lora_weights (fused q/k/v split)."""
    from simpletuner.attention.fused_qkv import split_lora_state

    return diffusers_layout(split_lora_state(adapter_state(denoiser)))


def relative_to_base(
    state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """An adapter trained on a residual base (pissa, olora), as a LoRA for the real base.

    The trained model is ``W_res + s B A`` with ``W_res = W - s B0 A0``, so
    relative to ``W`` it adds ``s (B A - B0 A0) = [s B, -s B0] [A; A0]``: a
    LoRA of twice the rank whose scale is baked into B (it loads with
    alpha = rank, a scale of 1).
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key:
            converted[key] = torch.cat([value, initial[key]], dim=0)
        elif ".lora_B." in key:
            converted[key] = torch.cat([value, -initial[key]], dim=1) * scale
        else:
            converted[key] = value
    return converted


def _tuner_layers(denoiser: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in denoiser.modules() if isinstance(module, BaseTunerLayer)]


@contextmanager
def adapter_disabled(denoiser: torch.nn.Module) -> Iterator[None]:
    """The base model: each LoRA layer runs only its base layer.

    Done layer by layer, which is what diffusers' disable_adapters does, so it
    also works for denoisers without diffusers' PEFT mixin (PixArt).
    """
    layers = _tuner_layers(denoiser)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@contextmanager
def adapter_weights_swapped(denoiser: torch.nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily load ``state`` into the adapter, then put the live weights back.

    Changes weights in place: call it before, not between, a forward pass and
    its backward pass.
    """
    from peft import get_peft_model_state_dict

    live = {k: v.detach().clone() for k, v in get_peft_model_state_dict(denoiser).items()}
    load_adapter_state(denoiser, state)
    try:
        yield
    finally:
        load_adapter_state(denoiser, live)
