"""One validation image: cached text embeds in, a PIL image out, through the pipeline."""

from __future__ import annotations

from typing import Any, Optional

import torch


def batched(entry: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A text-embed cache entry as a batch of one on ``device`` (floats in ``dtype``)."""
    return {name: (t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)).unsqueeze(0)
            for name, t in entry.items()}


def render_image(pipeline: Any, family: Any, positive: dict[str, torch.Tensor],
                 negative: Optional[dict[str, torch.Tensor]], width: int, height: int, seed: int,
                 steps: int) -> Any:
    """The image the pipeline draws for these embeds from ``seed`` (a CPU generator, so
    the same seed draws the same noise on every device)."""
    inputs = family.validation_inputs(positive, negative)
    inputs.update(height=height, width=width, num_inference_steps=steps, output_type="pil",
                  generator=torch.Generator("cpu").manual_seed(seed))
    return family.render_validation(pipeline, inputs)
