"""Turning a list of samples into the tensors of one training batch.

Everything comes from the caches: latents by their latent key, text embeds by
caption key; the family adds conditioning derived from each sample's geometry
(SDXL's time_ids).  A missing or unreadable entry is a bug in cache
preparation or a file deleted mid-run, so it raises with the file named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from simpletuner.caching.keys import latent_key, text_key
from simpletuner.caching.store import TensorStore
from simpletuner.data.records import TrainingSample
from simpletuner.errors import DataError


# Decoded entries are kept in memory up to this many bytes, so epochs after the
# first read nothing from disk; beyond it entries are read per step as before.
MEMORY_BUDGET_BYTES = 2 * 1024**3


@dataclass
class CacheLookup:
    """How to find a sample's cache entries: stores plus key ingredients."""

    latent_stores: dict[str, TensorStore]  # dataset id -> latent store
    text_stores: dict[str, TensorStore]  # dataset id -> text-embed store
    vae_identity: str
    text_identity: str
    normalisation: str
    memory_budget: int = MEMORY_BUDGET_BYTES
    _memory: dict = field(default_factory=dict, repr=False)
    _memory_bytes: int = 0

    def _remember(self, key: Any, tensors: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._memory_bytes + size <= self.memory_budget:
            self._memory[key] = tensors
            self._memory_bytes += size

    def latents(self, sample: TrainingSample) -> torch.Tensor:
        remembered = self._memory.get(("latent", sample))
        if remembered is not None:
            return remembered["latent"]
        store = self.latent_stores[sample.dataset_id]
        key = latent_key(sample, self.vae_identity, self.normalisation)
        entry = store.load(key)
        if entry is None:
            raise DataError(
                f"dataset '{sample.dataset_id}': latent cache entry for {sample.record.relative_path} "
                f"is missing or unreadable ({store.path_for(key)}); restart to re-encode it"
            )
        self._remember(("latent", sample), entry)
        return entry["latent"]

    def text(self, sample: TrainingSample) -> dict[str, torch.Tensor]:
        remembered = self._memory.get(("text", sample.dataset_id, sample.caption))
        if remembered is not None:
            return remembered
        store = self.text_stores[sample.dataset_id]
        key = text_key(sample.caption, self.text_identity)
        entry = store.load(key)
        if entry is None:
            raise DataError(
                f"dataset '{sample.dataset_id}': text-embed cache entry for caption "
                f"{sample.caption[:40]!r} is missing or unreadable; restart to re-encode it"
            )
        self._remember(("text", sample.dataset_id, sample.caption), entry)
        return entry


def collate(samples: list[TrainingSample], lookup: CacheLookup, family: Any) -> dict[str, torch.Tensor]:
    batch: dict[str, Any] = {"latents": torch.stack([lookup.latents(s) for s in samples])}
    texts = [lookup.text(s) for s in samples]
    for name in texts[0]:
        batch[name] = torch.stack([t[name] for t in texts])
    batch.update(family.sample_conditioning(samples))
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move tensors; floating-point ones also take the training dtype."""
    return {
        name: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        for name, t in batch.items()
    }
