"""Attaching and extracting LoRA adapters with PEFT."""

from __future__ import annotations

from typing import Any

import torch

ADAPTER_NAME = "default"

# --lora_init_type -> peft's init_lora_weights
_INIT = {"default": True, "gaussian": "gaussian", "loftq": "loftq", "olora": "olora", "pissa": "pissa"}


def add_lora(denoiser: torch.nn.Module, config: Any, target_modules: tuple[str, ...]) -> None:
    """Freeze the denoiser and give it a trainable LoRA adapter (kept in fp32)."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
        lora_dropout=config.lora_dropout,
        init_lora_weights=_INIT[config.lora_init_type],
        target_modules=list(target_modules),
    )
    if hasattr(denoiser, "add_adapter"):
        denoiser.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
    else:
        # Denoisers without diffusers' PeftAdapterMixin (PixArt's transformer):
        # PEFT's injection, which is what add_adapter does underneath.
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config, denoiser, adapter_name=ADAPTER_NAME)
    for parameter in denoiser.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


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


def diffusers_lora_state(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' key layout, for save_lora_weights."""
    from diffusers.utils import convert_state_dict_to_diffusers

    return convert_state_dict_to_diffusers(adapter_state(denoiser))
