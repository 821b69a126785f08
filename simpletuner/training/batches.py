"""Turning a list of samples into the tensors of one training batch.

Everything comes from the caches: latents by their latent key, text embeds by
caption key; the family adds conditioning derived from each sample's geometry
(SDXL's time_ids).  A missing or unreadable entry is a bug in cache
preparation or a file deleted mid-run, so it raises with the file named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from simpletuner.caching.keys import latent_key, text_key
from simpletuner.caching.store import TensorStore
from simpletuner.data.records import TrainingSample
from simpletuner.errors import DataError


@dataclass(frozen=True)
class CacheLookup:
    """How to find a sample's cache entries: stores plus key ingredients."""

    latent_stores: dict[str, TensorStore]  # dataset id -> latent store
    text_stores: dict[str, TensorStore]  # dataset id -> text-embed store
    vae_identity: str
    text_identity: str
    normalisation: str

    def latents(self, sample: TrainingSample) -> torch.Tensor:
        store = self.latent_stores[sample.dataset_id]
        key = latent_key(sample, self.vae_identity, self.normalisation)
        entry = store.load(key)
        if entry is None:
            raise DataError(
                f"dataset '{sample.dataset_id}': latent cache entry for {sample.record.relative_path} "
                f"is missing or unreadable ({store.path_for(key)}); restart to re-encode it"
            )
        return entry["latent"]

    def text(self, sample: TrainingSample) -> dict[str, torch.Tensor]:
        store = self.text_stores[sample.dataset_id]
        key = text_key(sample.caption, self.text_identity)
        entry = store.load(key)
        if entry is None:
            raise DataError(
                f"dataset '{sample.dataset_id}': text-embed cache entry for caption "
                f"{sample.caption[:40]!r} is missing or unreadable; restart to re-encode it"
            )
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
