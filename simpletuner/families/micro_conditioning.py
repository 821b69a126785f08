"""SDXL-style UNet conditioning, shared by the families whose UNet has it (SDXL, Kolors).

Such a UNet takes the token embeddings as ``encoder_hidden_states`` plus an
"added" embedding of a pooled text vector and six numbers per image, the
micro-conditioning of the SDXL paper (Podell et al., 2023, section 2.2):
original (height, width), crop top-left (top, left), target (height, width).
The pipelines compute the same six numbers in ``_get_add_time_ids``.
"""

from __future__ import annotations

from typing import Any

import torch


def size_and_crop_time_ids(samples: list) -> torch.Tensor:
    """One row per sample: original size + crop top-left + target size, from its real geometry."""
    rows = [
        list(sample.original_size) + list(sample.crop_top_left) + list(sample.target_size)
        for sample in samples
    ]
    return torch.tensor(rows, dtype=torch.float32)


def size_crop_and_score_time_ids(samples: list, aesthetic_score: float) -> torch.Tensor:
    """The SDXL refiner's five numbers: original size + crop top-left + an aesthetic score
    (diffusers' img2img ``_get_add_time_ids`` with ``requires_aesthetics_score``)."""
    rows = [list(sample.original_size) + list(sample.crop_top_left) + [aesthetic_score] for sample in samples]
    return torch.tensor(rows, dtype=torch.float32)


class TextTimeConditioning:
    """Mixin for a ``ModelFamily`` whose UNet uses ``addition_embed_type="text_time"``.

    The text cache must store ``prompt_embeds`` and ``pooled_prompt_embeds``.
    """

    def sample_conditioning(self, samples: list) -> dict[str, torch.Tensor]:
        return {"time_ids": size_and_crop_time_ids(samples)}

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        # The pooled vector is what the added embedding takes besides the six time ids.
        count = getattr(self, "time_id_count", 6)  # five for the SDXL refiner (a score, no target size)
        time_width = count * denoiser_config.addition_time_embed_dim
        pooled = denoiser_config.projection_class_embeddings_input_dim - time_width
        tokens = getattr(self, "max_sequence_length", 77)
        # Kolors' UNet projects ChatGLM's wider states down itself (encoder_hid_dim).
        width = getattr(denoiser_config, "encoder_hid_dim", None) or denoiser_config.cross_attention_dim
        return {
            "prompt_embeds": torch.zeros(batch_size, tokens, width),
            "pooled_prompt_embeds": torch.zeros(batch_size, pooled),
            "time_ids": torch.zeros(batch_size, count),
        }

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        return {
            "sample": noisy_latents,
            "timestep": timesteps,
            "encoder_hidden_states": batch["prompt_embeds"],
            "added_cond_kwargs": {
                "text_embeds": batch["pooled_prompt_embeds"],
                "time_ids": batch["time_ids"],
            },
        }
