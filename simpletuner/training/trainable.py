"""Which weights a run trains, how they are checkpointed, and what is saved at the end.

``--model_type lora`` trains an adapter on a frozen (possibly lower
precision) denoiser: a PEFT LoRA (``--lora_type standard``) or a LyCORIS
network (``--lora_type lycoris``).  ``--model_type full`` trains every
denoiser weight in fp32 with autocast doing the low-precision compute.  The
trainer talks to all three through the same small interface, including
``base_model(denoiser)``, a context in which an adapter run's denoiser
behaves as the untrained base model (for regularisation targets).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from simpletuner.attention import fused_qkv
from simpletuner.training import adapters

WEIGHTS_FILE = "trainable.safetensors"
TEXT_WEIGHTS_FILE = "text_encoders.safetensors"  # --train_text_encoder's LoRA weights in a checkpoint
LORA_FILE = "pytorch_lora_weights.safetensors"
EMA_FOLDER = "ema"


class LoraTraining:
    has_base_model = True
    # The trained text encoders (--train_text_encoder), set by the trainer; None: their embeds are cached.
    text: Optional[Any] = None

    def __init__(self, config: Any, family: Any) -> None:
        self.config = config
        self.family = family
        # The adapter as initialised, kept when the initialisation rewrote the
        # base weights (pissa, olora): both the base model and a LoRA for the
        # real base weights are computed from it.
        self.initial: Optional[dict[str, torch.Tensor]] = None

    def frozen_dtype(self, training_dtype: torch.dtype) -> torch.dtype:
        return frozen_base_dtype(self.config, training_dtype)

    def summary(self) -> str:
        """What the start-up summary says after the model type."""
        init = "" if self.config.lora_init_type == "default" else f", {self.config.lora_init_type} init"
        return f" rank {self.config.lora_rank}{init}"

    def prepare(self, denoiser: torch.nn.Module) -> None:
        targets = self.family.lora_targets(self.config)
        if fused_qkv.is_fused(denoiser):  # --fused_qkv_projections: the fused Linears take the LoRA
            targets = fused_qkv.lora_targets(denoiser, targets)
        adapters.add_lora(denoiser, self.config, targets)
        if self.config.lora_init_type in adapters.BASE_MUTATING_INITS:
            # Cloned: on the CPU adapter_state shares storage with the live weights.
            self.initial = {k: v.clone() for k, v in adapters.adapter_state(denoiser).items()}

    def parameters(self, denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
        encoders = self.text.parameters() if self.text is not None else []
        return adapters.trainable_parameters(denoiser) + encoders

    def base_model(self, denoiser: torch.nn.Module) -> AbstractContextManager:
        if self.initial is None:
            return adapters.adapter_disabled(denoiser)
        # The frozen weights are a residual here; the initial adapter completes them.
        return adapters.adapter_weights_swapped(denoiser, self.initial)

    def save_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        save_file(adapters.adapter_state(denoiser), str(folder / WEIGHTS_FILE))
        _save_text_state(self.text, folder)
        # The same weights as a LoRA file, so a checkpoint is usable as a LoRA.
        self._save_lora(denoiser, folder)

    def load_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        state = load_file(str(folder / WEIGHTS_FILE))
        fused_qkv.check_saved_layout(state, denoiser, folder)  # a mismatch names the flag, not the keys
        adapters.load_adapter_state(denoiser, state)
        _load_text_state(self.text, folder)

    def checkpoint_bytes(self, denoiser: torch.nn.Module) -> int:
        # The state and its LoRA-file copy (which holds the text encoders' LoRA too).
        return 2 * (_state_bytes(adapters.adapter_state(denoiser)) + _text_bytes(self.text))

    def final_bytes(self, denoiser: torch.nn.Module, source: Any) -> int:
        # pissa/olora runs save a LoRA of twice the rank (see _save_lora).
        denoiser_bytes = (1 if self.initial is None else 2) * _state_bytes(adapters.adapter_state(denoiser))
        return denoiser_bytes + _text_bytes(self.text)

    def save_final(self, denoiser: torch.nn.Module, output_dir: Path, source: Any) -> None:
        self._save_lora(denoiser, output_dir)

    def save_ema(self, denoiser: torch.nn.Module, output_dir: Path) -> None:
        """The averaged adapter, loadable with load_lora_weights(output_dir / "ema")."""
        self._save_lora(denoiser, output_dir / EMA_FOLDER)

    def _save_lora(self, denoiser: torch.nn.Module, folder: Path) -> None:
        # Saved for the unfused base: a fused projection's LoRA as its parts' LoRAs.
        state = fused_qkv.split_lora_state(adapters.adapter_state(denoiser))
        if self.initial is None:
            encoders = None
            if self.text is not None:  # saved beside the denoiser's, as load_lora_weights reads them
                encoders = {name: adapters.diffusers_layout(s) for name, s in self.text.states().items()}
            self.family.save_lora(folder, adapters.diffusers_layout(state), encoders)
            return
        # A LoRA that applies to the published base weights, not to the residual
        # this run trained on: twice the rank, its scale folded into the weights.
        from simpletuner.config.model import replace

        converted = adapters.relative_to_base(state, fused_qkv.split_lora_state(self.initial),
                                              adapters.lora_scale(self.config))
        rank = 2 * self.config.lora_rank
        family = type(self.family)(replace(self.config, lora_rank=rank, lora_alpha=float(rank)))
        family.save_lora(folder, adapters.diffusers_layout(converted))


class LycorisTraining:
    """A LyCORIS network described by --lycoris_config; saved in LyCORIS' own format."""

    has_base_model = True
    text: Optional[Any] = None  # --train_text_encoder is a standard LoRA's only

    def __init__(self, config: Any, family: Any) -> None:
        from simpletuner.training.lycoris_config import read_lycoris_config

        self.config = config
        self.family = family
        self.spec = read_lycoris_config(config.lycoris_config)
        self.network: Any = None

    def frozen_dtype(self, training_dtype: torch.dtype) -> torch.dtype:
        return frozen_base_dtype(self.config, training_dtype)

    def summary(self) -> str:
        return f" LyCORIS {self.spec['algo']}"

    def prepare(self, denoiser: torch.nn.Module) -> None:
        from simpletuner.training.lycoris_adapter import attach_lycoris

        self.network = attach_lycoris(denoiser, self.spec, self.config.lycoris_config, self.family)

    def parameters(self, denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def base_model(self, denoiser: torch.nn.Module) -> AbstractContextManager:
        from simpletuner.training.lycoris_adapter import lycoris_disabled

        return lycoris_disabled(self.network)

    def save_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        self._save(folder)

    def load_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        from simpletuner.training.lycoris_adapter import load_lycoris

        load_lycoris(self.network, folder / LORA_FILE)

    def checkpoint_bytes(self, denoiser: torch.nn.Module) -> int:
        return _state_bytes(self.network.state_dict())

    def final_bytes(self, denoiser: torch.nn.Module, source: Any) -> int:
        return _state_bytes(self.network.state_dict())

    def save_final(self, denoiser: torch.nn.Module, output_dir: Path, source: Any) -> None:
        self._save(output_dir)

    def save_ema(self, denoiser: torch.nn.Module, output_dir: Path) -> None:
        self._save(output_dir / EMA_FOLDER)

    def _save(self, folder: Path) -> None:
        from simpletuner.training.lycoris_adapter import save_lycoris

        folder.mkdir(parents=True, exist_ok=True)
        save_lycoris(self.network, folder / LORA_FILE, self.spec)


class FullTraining:
    # Every weight trains, so there is no untouched base model to ask.
    has_base_model = False
    # The trained text encoders (--train_text_encoder), set by the trainer; None: their embeds are cached.
    text: Optional[Any] = None

    def __init__(self, config: Any, family: Any) -> None:
        self.config = config
        self.family = family

    def frozen_dtype(self, training_dtype: torch.dtype) -> torch.dtype:
        return torch.float32  # master weights stay fp32; autocast handles bf16 compute

    def summary(self) -> str:
        return ""

    def prepare(self, denoiser: torch.nn.Module) -> None:
        denoiser.requires_grad_(True)
        fused_qkv.freeze_separate(denoiser)  # --fused_qkv_projections: only the fused Linears run

    def parameters(self, denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
        encoders = self.text.parameters() if self.text is not None else []
        return [p for p in denoiser.parameters() if p.requires_grad] + encoders

    def base_model(self, denoiser: torch.nn.Module) -> AbstractContextManager:
        raise TypeError("a full fine-tune keeps no copy of the base model")

    def save_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        # The ordinary layout also under --fused_qkv_projections (the fused Linears share its storage).
        state = {k: v.detach().cpu().contiguous() for k, v in fused_qkv.unfused_state_dict(denoiser).items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        _save_text_state(self.text, folder)

    def load_state(self, denoiser: torch.nn.Module, folder: Path) -> None:
        fused_qkv.load_unfused(denoiser, load_file(str(folder / WEIGHTS_FILE)))
        _load_text_state(self.text, folder)

    def checkpoint_bytes(self, denoiser: torch.nn.Module) -> int:
        return _state_bytes(fused_qkv.unfused_state_dict(denoiser)) + _text_bytes(self.text)

    def final_bytes(self, denoiser: torch.nn.Module, source: Any) -> int:
        """The trained denoiser plus the base pipeline's other components, when those are local files."""
        base = Path(source.base).expanduser()
        others = 0
        if base.is_dir():
            skipped = base / self.family.denoiser_component
            others = sum(f.stat().st_size for f in base.rglob("*") if f.is_file() and skipped not in f.parents)
        return _state_bytes(fused_qkv.unfused_state_dict(denoiser)) + others

    def save_final(self, denoiser: torch.nn.Module, output_dir: Path, source: Any) -> None:
        """A complete diffusers model folder: the base pipeline with the trained denoiser
        (and the trained text encoders, with --save_text_encoder)."""
        encoders = self.text.encoders() if self.text is not None and self.config.save_text_encoder else None
        with fused_qkv.unfused(denoiser):  # saved as the ordinary model, also under --fused_qkv_projections
            self.family.save_full_pipeline(output_dir, denoiser, source, encoders)

    def save_ema(self, denoiser: torch.nn.Module, output_dir: Path) -> None:
        """The averaged denoiser beside the pipeline, as unet_ema/ or transformer_ema/."""
        with fused_qkv.unfused(denoiser):
            denoiser.save_pretrained(str(output_dir / f"{self.family.denoiser_component}_ema"),
                                     safe_serialization=True)


def _save_text_state(text: Optional[Any], folder: Path) -> None:
    """The trained text encoders' weights (--train_text_encoder), beside the denoiser's."""
    if text is not None:
        from simpletuner.training.trained_text_encoders import flat_state

        save_file(flat_state(text.states()), str(folder / TEXT_WEIGHTS_FILE))


def _load_text_state(text: Optional[Any], folder: Path) -> None:
    if text is None:
        return
    from simpletuner.training.trained_text_encoders import split_state

    path = folder / TEXT_WEIGHTS_FILE
    if not path.is_file():
        from simpletuner.errors import UserError

        raise UserError(f"{folder} was saved without --train_text_encoder; resume it without that option")
    text.load_states(split_state(load_file(str(path)), text.components))


def frozen_base_dtype(config: Any, training_dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of an adapter run's frozen base (its unquantised weights).

    The mixed-precision dtype, unless --base_model_default_dtype fp32 keeps it
    at full precision (autocast still computes in bf16).  With
    --mixed_precision no the option is set aside (config/inert.py), so the
    base stays fp32 as the fp32 compute needs.
    """
    return torch.float32 if config.base_model_default_dtype == "fp32" else training_dtype


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _text_bytes(text: Optional[Any]) -> int:
    """What a checkpoint's text_encoders.safetensors holds (--train_text_encoder)."""
    return text.state_bytes() if text is not None else 0


def trainable_for(config: Any, family: Any) -> Any:
    if config.model_type == "full":
        return FullTraining(config, family)
    if config.lora_type == "lycoris":
        return LycorisTraining(config, family)
    return LoraTraining(config, family)
