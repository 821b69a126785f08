"""CLIP score of validation images against their prompts (``--evaluation_type clip``).

The score is torchmetrics' ``CLIPScore`` definition (Hessel et al., 2021,
"CLIPScore"): ``100 * max(cos(image embedding, text embedding), 0)``, computed
with transformers' CLIP model and processor.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


class ClipScorer:
    """Loads the CLIP model on first use and keeps it (on the CPU between validations)."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.device = device
        self._model: Optional[Any] = None
        self._processor: Optional[Any] = None

    def _load(self) -> None:
        from transformers import CLIPModel, CLIPProcessor

        from simpletuner.logs import quiet_libraries

        quiet_libraries()
        self._model = CLIPModel.from_pretrained(self.path).eval().requires_grad_(False)
        self._processor = CLIPProcessor.from_pretrained(self.path)

    @torch.no_grad()
    def scores(self, images: list[Any], prompts: list[str]) -> list[float]:
        """One score per (image, prompt) pair."""
        if self._model is None:
            self._load()
        model = self._model.to(self.device)
        try:
            inputs = self._processor(text=prompts, images=images, return_tensors="pt", padding=True,
                                     truncation=True).to(self.device)
            output = model(**inputs)
        finally:
            model.to("cpu")
        image = torch.nn.functional.normalize(output.image_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(output.text_embeds.float(), dim=-1)
        return (100 * (image * text).sum(dim=-1).clamp(min=0)).tolist()
