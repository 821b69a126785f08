"""Encoding training images into the on-disk latent cache."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from simpletuner.caching.keys import latent_key
from simpletuner.caching.store import TensorStore
from simpletuner.data.records import TrainingSample

logger = logging.getLogger(__name__)


@dataclass
class CacheReport:
    reused: int = 0
    encoded: int = 0

    def __str__(self) -> str:
        return f"{self.reused} reused, {self.encoded} encoded"


def _entry_generator(key: str) -> torch.Generator:
    # The VAE posterior is sampled; seeding from the key makes the cached
    # latent a pure function of its inputs, so re-encoding is reproducible.
    return torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:15], 16))


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
    missing = [(s, k) for s, k in zip(samples, keys) if not store.has(k)]
    report = CacheReport(reused=len(samples) - len(missing))
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
            chunk = group[start : start + batch_size]
            pixels = torch.stack([load_pixels(sample) for sample, _ in chunk])
            generators = [_entry_generator(key) for _, key in chunk]
            latents = encode(vae, pixels, generators)
            for (_, key), latent in zip(chunk, latents):
                store.save(key, {"latent": latent.float().cpu()})
            report.encoded += len(chunk)
            progress.update(len(chunk))
    progress.close()
    return report


def latent_keys(samples: Sequence[TrainingSample], vae_identity: str, normalisation: str) -> list[str]:
    return [latent_key(sample, vae_identity, normalisation) for sample in samples]
