"""Encoding training images into the on-disk latent cache."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from simpletuner.caching.keys import latent_key, latent_sample_seed
from simpletuner.caching.store import TensorStore
from simpletuner.data.records import TrainingSample
from simpletuner.data.transforms import ImageDecodeError

logger = logging.getLogger(__name__)


@dataclass
class CacheReport:
    reused: int = 0
    encoded: int = 0
    failed: list[str] = field(default_factory=list)  # relative paths that could not be decoded
    damaged: int = 0  # entries present but truncated or unreadable, encoded again

    def __str__(self) -> str:
        text = f"{self.reused} reused, {self.encoded} encoded"
        if self.damaged:
            text += f" ({self.damaged} replacing damaged entries)"
        return text + (f", {len(self.failed)} undecodable" if self.failed else "")


def build_latent_cache(
    samples: Sequence[TrainingSample],
    keys: Sequence[str],
    store: TensorStore,
    load_vae: Callable[[], Any],
    encode: Callable[[Any, torch.Tensor, list[torch.Generator]], torch.Tensor],
    load_pixels: Callable[[TrainingSample], torch.Tensor],
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
    show_progress: bool = True,
) -> CacheReport:
    """Encode every sample whose key is not yet stored; return what happened.

    ``shard=(rank, world_size)`` splits the missing entries between
    processes; the caller waits for all ranks afterwards.  The VAE is only
    loaded when at least one entry is missing.
    """
    missing = [(s, k) for s, k in zip(samples, keys) if not store.is_intact(k)]
    report = CacheReport(reused=len(samples) - len(missing))
    report.damaged = sum(store.has(k) for _, k in missing)
    rank, world_size = shard
    mine = missing[rank::world_size]
    if not mine:
        return report
    vae = load_vae()
    by_size: dict[tuple[int, int], list] = defaultdict(list)
    for sample, key in mine:
        by_size[sample.target_size].append((sample, key))
    progress = tqdm(total=len(mine), desc="Caching latents", disable=not show_progress, unit="img")
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk, pixels = _decodable(group[start : start + batch_size], load_pixels, report)
            if chunk:
                # The VAE posterior is sampled; a per-entry seed makes each cached
                # latent reproducible whatever else shares its batch.
                generators = [torch.Generator().manual_seed(latent_sample_seed(sample)) for sample, _ in chunk]
                latents = encode(vae, torch.stack(pixels), generators)
                for (_, key), latent in zip(chunk, latents):
                    store.save(key, {"latent": latent.float().cpu()})
                report.encoded += len(chunk)
            progress.update(min(batch_size, len(group) - start))
    progress.close()
    return report


def _decodable(chunk: list, load_pixels: Callable, report: CacheReport) -> tuple[list, list]:
    """The entries of ``chunk`` whose pixels load; the others go to ``report.failed``."""
    kept, pixels = [], []
    for sample, key in chunk:
        try:
            pixels.append(load_pixels(sample))
            kept.append((sample, key))
        except ImageDecodeError:
            report.failed.append(sample.record.relative_path)
    return kept, pixels


def scan_latents(
    samples: Sequence[TrainingSample],
    keys: Sequence[str],
    store: TensorStore,
    scale_factor: int,
    shard: tuple[int, int] = (0, 1),
) -> int:
    """Remove entries that do not load, hold non-finite values or have the wrong shape.

    ``--vae_cache_scan_behaviour recreate``: removed entries are simply
    encoded again by :func:`build_latent_cache`.  Returns how many were removed.
    """
    rank, world_size = shard
    removed = 0
    for sample, key in list(zip(samples, keys))[rank::world_size]:
        if not store.has(key):
            continue
        entry = store.load(key)
        latent = None if entry is None else entry.get("latent")
        height, width = sample.target_size
        expected = (height // scale_factor, width // scale_factor)
        if latent is None or tuple(latent.shape[-2:]) != expected or not torch.isfinite(latent).all():
            store.remove(key)
            removed += 1
    return removed


def latent_keys(samples: Sequence[TrainingSample], vae_identity: str, normalisation: str) -> list[str]:
    return [latent_key(sample, vae_identity, normalisation) for sample in samples]
