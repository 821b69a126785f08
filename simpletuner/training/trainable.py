"""Which weights a run trains, how they are checkpointed, and what is saved at the end.

``--model_type lora`` trains a PEFT adapter on a frozen (possibly lower
precision) denoiser; ``--model_type full`` trains every denoiser weight in
fp32 with autocast doing the low-precision compute.  The trainer talks to
either through the same small interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from simpletuner.training import adapters

WEIGHTS_FILE = "trainable.safetensors"
EMA_FOLDER = "ema"


class LoraTraining:
    def __init__(self, config: Any, family: Any) -> None:
        self.config = config
        self.family = family

    def frozen_dtype(self, training_dtype: torch.dtype) -> torch.dtype:
        return training_dtype

    def prepare(self, denoiser: torch.nn.Module) -> None:
        adapters.add_lora(denoiser, self.config, self.family.lora_targets(self.config))

    def parameters(self, denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
        return adapters.trainable_parameters(denoiser)

    def save_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        save_file(adapters.adapter_state(denoiser), str(folder / WEIGHTS_FILE))
        # The same weights in diffusers' layout, so a checkpoint is usable as a LoRA.
        self.family.save_lora(folder, adapters.diffusers_lora_state(denoiser))

    def load_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        adapters.load_adapter_state(denoiser, load_file(str(folder / WEIGHTS_FILE)))

    def save_final(self, denoiser: torch.nn.Module, output_dir: Path, source: Any) -> None:
        self.family.save_lora(output_dir, adapters.diffusers_lora_state(denoiser))

    def save_ema(self, denoiser: torch.nn.Module, output_dir: Path) -> None:
        """The averaged adapter, loadable with load_lora_weights(output_dir / "ema")."""
        self.family.save_lora(output_dir / EMA_FOLDER, adapters.diffusers_lora_state(denoiser))


class FullTraining:
    def __init__(self, config: Any, family: Any) -> None:
        self.config = config
        self.family = family

    def frozen_dtype(self, training_dtype: torch.dtype) -> torch.dtype:
        return torch.float32  # master weights stay fp32; autocast handles bf16 compute

    def prepare(self, denoiser: torch.nn.Module) -> None:
        denoiser.requires_grad_(True)

    def parameters(self, denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in denoiser.parameters() if p.requires_grad]

    def save_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))

    def load_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        denoiser.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))

    def save_final(self, denoiser: torch.nn.Module, output_dir: Path, source: Any) -> None:
        """A complete diffusers model folder: the base pipeline with the trained denoiser."""
        self.family.save_full_pipeline(output_dir, denoiser, source)

    def save_ema(self, denoiser: torch.nn.Module, output_dir: Path) -> None:
        """The averaged denoiser beside the pipeline, as unet_ema/ or transformer_ema/."""
        denoiser.save_pretrained(str(output_dir / f"{self.family.denoiser_component}_ema"), safe_serialization=True)


def trainable_for(config: Any, family: Any) -> Any:
    return {"lora": LoraTraining, "full": FullTraining}[config.model_type](config, family)
