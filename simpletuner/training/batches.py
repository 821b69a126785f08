"""Turning a list of samples into the tensors of one training batch.

Everything comes from the caches: latents by their latent key, text embeds by
caption key; the family adds conditioning derived from each sample's geometry
(SDXL's time_ids).  A missing or unreadable entry is a bug in cache
preparation or a file deleted mid-run, so it raises with the file named.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from simpletuner.caching.keys import latent_key, text_key
from simpletuner.caching.store import TensorStore
from simpletuner.caching.text_embeds import EMPTY_PROMPT
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
    scale_factor: int = 8  # pixels per latent cell; entries of another size are refused
    # Samples moved by a sync scan into the bucket of an entry encoded elsewhere keep that entry.
    key_overrides: dict[TrainingSample, str] = field(default_factory=dict)
    # Re-encodes datasets with vae_cache_clear_each_epoch at each new epoch (training/epoch_latents.py).
    epoch_crops: Any = None
    # --vae_cache_ondemand: encodes missing latents as batches need them (training/ondemand_latents.py).
    ondemand: Any = None
    _memory: dict = field(default_factory=dict, repr=False)
    _memory_bytes: int = 0
    # The --dataloader_prefetch worker reads while the loop's evaluation may too.
    _memory_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _remember(self, key: Any, tensors: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        with self._memory_lock:
            if self._memory_bytes + size <= self.memory_budget:
                self._memory[key] = tensors
                self._memory_bytes += size

    def forget(self, samples: Sequence[TrainingSample]) -> None:
        """Drop remembered latents of ``samples`` (their entries were replaced)."""
        with self._memory_lock:
            for sample in samples:
                entry = self._memory.pop(("latent", sample), None)
                if entry is not None:
                    self._memory_bytes -= sum(t.numel() * t.element_size() for t in entry.values())

    def for_epoch(self, samples: list[TrainingSample], epoch: int) -> list[TrainingSample]:
        """The samples as trained in ``epoch``: fresh crops where a dataset asks for them."""
        if self.epoch_crops is None:
            return samples
        return self.epoch_crops.samples_for(samples, epoch)

    def latent_key(self, sample: TrainingSample) -> str:
        return self.key_overrides.get(sample) or latent_key(sample, self.vae_identity, self.normalisation)

    def remembers(self, sample: TrainingSample) -> bool:
        """Whether the latent of ``sample`` is held in memory (no store request needed)."""
        return ("latent", sample) in self._memory

    def ensure_latents(self, samples: Sequence[TrainingSample]) -> None:
        """With --vae_cache_ondemand, encode the entries of ``samples`` not cached yet, as one batch."""
        if self.ondemand is not None:
            self.ondemand.ensure(self, samples)

    def latents(self, sample: TrainingSample) -> torch.Tensor:
        remembered = self._memory.get(("latent", sample))
        if remembered is not None:
            return remembered["latent"]
        store = self.latent_stores[sample.dataset_id]
        key = self.latent_key(sample)
        entry = store.load(key)
        if entry is None and self.ondemand is not None:  # e.g. the held-out evaluation, which reads no batch
            self.ondemand.ensure(self, [sample])
            entry = store.load(key)
        if entry is None:
            raise DataError(
                f"dataset '{sample.dataset_id}': latent cache entry for {sample.record.relative_path} "
                f"is missing or unreadable ({store.path_for(key)}); restart to re-encode it (without 'vae' in "
                f"skip_file_discovery, which trusts the cache to be complete)"
            )
        height, width = sample.target_size
        expected = (height // self.scale_factor, width // self.scale_factor)
        if tuple(entry["latent"].shape[-2:]) != expected:
            raise DataError(
                f"dataset '{sample.dataset_id}': latent cache entry for {sample.record.relative_path} "
                f"({store.path_for(key)}) is {tuple(entry['latent'].shape[-2:])} latent pixels but its bucket "
                f"needs {expected}; set \"scan_for_errors\": true on the dataset to fix it at start-up"
            )
        self._remember(("latent", sample), entry)
        return entry["latent"]

    def _text_entry(self, dataset_id: str, caption: str, what: str) -> dict[str, torch.Tensor]:
        remembered = self._memory.get(("text", dataset_id, caption))
        if remembered is not None:
            return remembered
        entry = self.text_stores[dataset_id].load(text_key(caption, self.text_identity))
        if entry is None:
            raise DataError(
                f"dataset '{dataset_id}': text-embed cache entry for {what} is missing or unreadable; "
                "restart to re-encode it (without 'text' in skip_file_discovery, which trusts the cache)"
            )
        self._remember(("text", dataset_id, caption), entry)
        return entry

    def text(self, sample: TrainingSample) -> dict[str, torch.Tensor]:
        return self._text_entry(sample.dataset_id, sample.caption, f"caption {sample.caption[:40]!r}")

    def empty_text(self, dataset_id: str) -> dict[str, torch.Tensor]:
        """The empty prompt's embeds (all of them: pooled ones and masks too)."""
        return self._text_entry(dataset_id, EMPTY_PROMPT, "the empty prompt")


def caption_dropout(count: int, probability: float, generator: torch.Generator) -> list[bool]:
    """Which of ``count`` samples train with the empty prompt this step.

    Nothing is drawn when ``probability`` is 0, so runs without caption
    dropout consume exactly the random numbers they always did; the draws
    come from the trainer's generator, which checkpoints save and restore.
    """
    if probability <= 0:
        return [False] * count
    return (torch.rand(count, generator=generator) < probability).tolist()


def collate(
    samples: list[TrainingSample], lookup: CacheLookup, family: Any, dropped: Optional[Sequence[bool]] = None,
    cached_text: bool = True,
) -> dict[str, torch.Tensor]:
    """The batch of ``samples``; those marked in ``dropped`` get the empty prompt's embeds.

    ``cached_text=False`` (--train_text_encoder) leaves the text embeds out:
    the trainer encodes them itself.
    """
    lookup.ensure_latents(samples)
    batch: dict[str, Any] = {"latents": torch.stack([lookup.latents(s) for s in samples])}
    dropped = dropped or [False] * len(samples)
    texts = [lookup.empty_text(s.dataset_id) if drop else lookup.text(s) for s, drop in zip(samples, dropped)
             ] if cached_text else [{}]
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
