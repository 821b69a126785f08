"""``--train_text_encoder``: the family's text encoder(s), trained with the denoiser.

As diffusers' train_dreambooth_lora scripts do it: the text encoders stay
loaded and every step encodes the batch's captions with gradients (their
embeds are therefore not cached).  With ``--model_type lora`` each encoder
gets a PEFT LoRA on its attention projections, saved beside the denoiser's
as ``<component>_lora_layers`` so ``pipeline.load_lora_weights(folder)``
loads both; with ``--model_type full`` the encoders' own weights train and
``--save_text_encoder`` writes them into the saved pipeline.  Either way
they train in their own optimizer group at ``--text_encoder_lr``.

SimpleTuner v1.x's limits apply: ``--freeze_encoder`` keeps some layers
frozen (see :mod:`simpletuner.training.encoder_layers`), and the encoders
train only during the first ``--text_encoder_limit`` percent of the steps,
after which they are frozen and the denoiser trains on alone.  Which
families support it, and the encoding itself, are the family's
(``text_encoder_lora_targets``, ``trainable_text_embeds``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import torch

from simpletuner.errors import UserError
from simpletuner.training import adapters
from simpletuner.training.encoder_layers import freeze_encoder_layers

logger = logging.getLogger(__name__)


class TrainedTextEncoders:
    """The trained text encoders of one run: their trained weights, states and live embeds."""

    def __init__(self, config: Any, family: Any, source: Any, device: torch.device, total_steps: int,
                 num_processes: int = 1) -> None:
        if num_processes > 1:
            # Not wrapped by accelerate, so their gradients would not be averaged across processes.
            raise UserError("--train_text_encoder with several processes is not implemented yet; train on one")
        self.config = config
        self.family = family
        self.full = config.model_type == "full"
        self.text = family.load_text_encoders(source)
        for name, encoder in zip(self.components, self.text.encoders):
            if self.full:
                encoder.requires_grad_(True)
            else:
                adapters.add_lora(encoder, config, family.text_encoder_lora_targets)
            frozen = freeze_encoder_layers(encoder, config)
            if frozen:
                logger.info("%s: layers %s stay frozen (--freeze_encoder_strategy %s)", name,
                            _ranges(frozen), config.freeze_encoder_strategy)
            encoder.to(device).train()
        # Kept: once the encoders stop training, requires_grad no longer tells which they were.
        self._parameters = [p for encoder in self.text.encoders for p in encoder.parameters() if p.requires_grad]
        self.train_steps = math.ceil(total_steps * config.text_encoder_limit / 100)
        self.training = True
        logger.info("text encoders (%s) train during the first %d of %d steps (--text_encoder_limit %d%%)",
                    "full" if self.full else "LoRA", self.train_steps, total_steps, config.text_encoder_limit)
        if self.full and not config.save_text_encoder:
            logger.warning("--train_text_encoder without --save_text_encoder: the saved model keeps the base "
                           "text encoders (checkpoints hold the trained ones); set --save_text_encoder true to "
                           "save them")

    @property
    def components(self) -> tuple[str, ...]:
        """The pipeline component names of the encoders, in order (text_encoder, text_encoder_2)."""
        return tuple(c for c in self.family.text_components if not c.startswith("tokenizer"))

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._parameters)

    def embeds(self, samples: Sequence[Any], dropped: Optional[Sequence[bool]], dtype: torch.dtype,
               step: int) -> dict[str, torch.Tensor]:
        """The batch's text inputs for optimizer step ``step`` (counted from 0), encoded now;
        with gradients while the encoders still train. Dropped captions are the empty prompt."""
        if self.training and step >= self.train_steps:
            self._stop(step)
        dropped = dropped or [False] * len(samples)
        prompts = ["" if drop else sample.caption for sample, drop in zip(samples, dropped)]
        with torch.set_grad_enabled(self.training):
            embeds = self.family.trainable_text_embeds(self.text, prompts)
        return {name: t.to(dtype) for name, t in embeds.items()}

    def _stop(self, step: int) -> None:
        """--text_encoder_limit reached: no more gradients, so the optimizer leaves the weights as they are."""
        self.training = False
        for parameter in self._parameters:
            parameter.requires_grad_(False)
            parameter.grad = None
        for encoder in self.text.encoders:
            encoder.eval()
        logger.info("text encoders frozen from step %d on (--text_encoder_limit %d%%)", step + 1,
                    self.config.text_encoder_limit)

    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{component: the encoder's trained weights}: its LoRA with PEFT's key names, or (full) its state dict."""
        if self.full:
            return {name: {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
                    for name, encoder in zip(self.components, self.text.encoders)}
        return {name: adapters.adapter_state(encoder) for name, encoder in zip(self.components, self.text.encoders)}

    def state_bytes(self) -> int:
        """The size of ``states()``, without copying full encoders off the device."""
        if self.full:
            tensors = [t for encoder in self.text.encoders for t in encoder.state_dict().values()]
        else:
            tensors = [t for state in self.states().values() for t in state.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def load_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, encoder in zip(self.components, self.text.encoders):
            if self.full:
                encoder.load_state_dict(states[name])
            else:
                adapters.load_adapter_state(encoder, states[name])

    def encoders(self) -> dict[str, torch.nn.Module]:
        """{component: encoder}, for a saved pipeline (--save_text_encoder)."""
        return dict(zip(self.components, self.text.encoders))


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    parts: list[str] = []
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ", ".join(parts)


def flat_state(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One safetensors-ready dict: each key prefixed with its component."""
    return {f"{name}.{key}": value for name, state in states.items() for key, value in state.items()}


def split_state(flat: dict[str, torch.Tensor], components: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(f"{name}.")} for name in components}


def optimizer_groups(parameters: list[torch.nn.Parameter], text: Optional[TrainedTextEncoders], config: Any,
                     learning_rate: float) -> list[dict[str, Any]]:
    """The trained parameters as optimizer groups: the text encoders' (when
    trained) at --text_encoder_lr, the rest at ``learning_rate``.

    --text_encoder_lr is scaled as --learning_rate is (--lr_scale); unset, it
    is the denoiser's rate.
    """
    if text is None:
        return [{"params": parameters}]
    encoder_parameters = text.parameters()
    encoder_ids = {id(p) for p in encoder_parameters}
    rate = learning_rate
    if config.text_encoder_lr is not None:
        scale = learning_rate / config.learning_rate if config.learning_rate else 1.0
        rate = config.text_encoder_lr * scale
    return [{"params": [p for p in parameters if id(p) not in encoder_ids]}, {"params": encoder_parameters, "lr": rate}]
