"""``--train_text_encoder``: a LoRA on the family's text encoder(s), trained with the denoiser.

As diffusers' train_dreambooth_lora scripts do it: the text encoders stay
loaded, each gets a PEFT LoRA on its attention projections, and every step
encodes the batch's captions with gradients (their embeds are therefore not
cached).  The LoRA weights train in their own optimizer group at
``--text_encoder_lr`` and are saved beside the denoiser's as
``text_encoder_lora_layers``, so ``pipeline.load_lora_weights(folder)`` loads
both.  Which families support it, and the encoding itself, are the family's
(``text_encoder_lora_targets``, ``trainable_text_embeds``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from simpletuner.errors import UserError
from simpletuner.training import adapters


class TextEncoderLora:
    """The trained text encoders of one run: their LoRA weights, states and live embeds."""

    def __init__(self, config: Any, family: Any, source: Any, device: torch.device, num_processes: int = 1) -> None:
        if num_processes > 1:
            # Not wrapped by accelerate, so their gradients would not be averaged across processes.
            raise UserError("--train_text_encoder with several processes is not implemented yet; train on one")
        self.config = config
        self.family = family
        self.text = family.load_text_encoders(source)
        for encoder in self.text.encoders:
            adapters.add_lora(encoder, config, family.text_encoder_lora_targets)
            encoder.to(device).train()

    @property
    def components(self) -> tuple[str, ...]:
        """The pipeline component names of the encoders, in order (text_encoder, text_encoder_2)."""
        return tuple(c for c in self.family.text_components if not c.startswith("tokenizer"))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for encoder in self.text.encoders for p in adapters.trainable_parameters(encoder)]

    def embeds(self, samples: Sequence[Any], dropped: Optional[Sequence[bool]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The batch's text inputs, encoded now with gradients; dropped captions are the empty prompt."""
        dropped = dropped or [False] * len(samples)
        prompts = ["" if drop else sample.caption for sample, drop in zip(samples, dropped)]
        return {name: t.to(dtype) for name, t in self.family.trainable_text_embeds(self.text, prompts).items()}

    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{component: the encoder's LoRA weights with PEFT's key names}."""
        return {name: adapters.adapter_state(encoder) for name, encoder in zip(self.components, self.text.encoders)}

    def load_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, encoder in zip(self.components, self.text.encoders):
            adapters.load_adapter_state(encoder, states[name])


def flat_state(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One safetensors-ready dict: each key prefixed with its component."""
    return {f"{name}.{key}": value for name, state in states.items() for key, value in state.items()}


def split_state(flat: dict[str, torch.Tensor], components: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(f"{name}.")} for name in components}


def optimizer_groups(parameters: list[torch.nn.Parameter], text: Optional[TextEncoderLora], config: Any,
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
