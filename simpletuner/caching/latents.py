"""Encoding training images into the on-disk latent cache, and checking what is there."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from simpletuner.caching.completeness import check_entries
from simpletuner.caching.keys import latent_key, latent_sample_seed
from simpletuner.caching.overlap import WriteBehind, loader_threads, read_ahead
from simpletuner.caching.store import TensorStore
from simpletuner.data.records import Size, TrainingSample
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


def share_of(items: Sequence, shard: tuple[int, int]) -> list:
    """This process's share of ``items``: every world_size-th item from its rank.

    Shares are taken from the full list, not from the entries found missing,
    so every rank computes the same split whatever the others have already
    written: no entry is encoded twice and none is left to nobody.
    """
    rank, world_size = shard
    return list(items[rank::world_size])


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
    """Encode this process's share of the samples whose key is not yet stored.

    ``shard=(rank, world_size)``; the caller waits for all ranks afterwards,
    and the report counts this process's share.  The VAE is only loaded when
    at least one entry of the share is missing.
    """
    share = share_of(list(zip(samples, keys)), shard)
    check = check_entries(store, [k for _, k in share], [s.target_size for s, _ in share])
    missing = [share[i] for i in check.missing]
    report = CacheReport(reused=len(share) - len(missing), damaged=check.damaged)
    if not missing:
        return report
    encoded, failed = encode_entries(missing, store, load_vae(), encode, load_pixels, batch_size, show_progress)
    report.encoded += encoded
    report.failed.extend(failed)
    return report


def encode_entries(
    entries: Sequence[tuple[TrainingSample, str]],
    store: TensorStore,
    vae: Any,
    encode: Callable[[Any, torch.Tensor, list[torch.Generator]], torch.Tensor],
    load_pixels: Callable[[TrainingSample], torch.Tensor],
    batch_size: int,
    show_progress: bool = False,
) -> tuple[int, list[str]]:
    """Encode and store each (sample, key): (how many were encoded, relative paths that did not decode).

    Used by the pass before training and by on-demand encoding during it
    (training/ondemand_latents.py), so both write the same entries.
    """
    by_size: dict[Size, list] = defaultdict(list)
    for sample, key in entries:
        by_size[sample.target_size].append((sample, key))
    batches = [group[start : start + batch_size] for group in by_size.values()
               for start in range(0, len(group), batch_size)]
    encoded, failed_paths = 0, []
    progress = tqdm(total=len(entries), desc="Caching latents", disable=not show_progress, unit="img")
    with WriteBehind(store) as writer:
        loaded = read_ahead(batches, lambda batch: _decodable(batch, load_pixels), loader_threads())
        for batch, (chunk, pixels, failed) in zip(batches, loaded):
            failed_paths.extend(failed)
            if chunk:
                # The VAE posterior is sampled; a per-entry seed makes each cached
                # latent reproducible whatever else shares its batch.
                generators = [torch.Generator().manual_seed(latent_sample_seed(sample)) for sample, _ in chunk]
                latents = encode(vae, torch.stack(pixels), generators)
                for (_, key), latent in zip(chunk, latents):
                    writer.save(key, {"latent": latent.float().cpu()})
                encoded += len(chunk)
            progress.update(len(batch))
    progress.close()
    return encoded, failed_paths


def _decodable(chunk: list, load_pixels: Callable) -> tuple[list, list, list[str]]:
    """(entries whose pixels load, their pixels, relative paths of those that do not)."""
    kept, pixels, failed = [], [], []
    for sample, key in chunk:
        try:
            pixels.append(load_pixels(sample))
            kept.append((sample, key))
        except ImageDecodeError:
            failed.append(sample.record.relative_path)
    return kept, pixels, failed


@dataclass
class ScanResult:
    """What ``scan_for_errors`` did on one process's share of a dataset."""

    removed: int = 0  # entries deleted, to be encoded again
    # sync: sample index -> the target size (h, w) its kept entry was encoded at
    resized: dict[int, Size] = field(default_factory=dict)


def scan_latents(
    samples: Sequence[TrainingSample],
    keys: Sequence[str],
    store: TensorStore,
    scale_factor: int,
    shard: tuple[int, int] = (0, 1),
    behaviour: str = "recreate",
) -> ScanResult:
    """Check this process's share of the entries: loadable, finite, the shape the bucket needs.

    ``recreate`` removes every bad entry, so :func:`build_latent_cache`
    encodes it again.  ``sync`` keeps an entry that is sound but holds a
    latent of another size, and reports the target size it implies so the
    sample can follow its entry into that bucket; unreadable or non-finite
    entries are removed either way, since there is nothing to follow.
    """
    result = ScanResult()
    indexed = share_of(list(enumerate(zip(samples, keys))), shard)
    for index, (sample, key) in indexed:
        if not store.has(key):
            continue
        entry = store.load(key)
        latent = None if entry is None else entry.get("latent")
        if latent is None or latent.dim() < 2 or not torch.isfinite(latent).all():
            store.remove(key)
            result.removed += 1
            continue
        found = tuple(latent.shape[-2:])
        if found == expected_latent_size(sample, scale_factor):
            continue
        if behaviour == "sync":
            result.resized[index] = (found[0] * scale_factor, found[1] * scale_factor)
        else:
            store.remove(key)
            result.removed += 1
    return result


def expected_latent_size(sample: TrainingSample, scale_factor: int) -> tuple[int, int]:
    height, width = sample.target_size
    return height // scale_factor, width // scale_factor


def latent_keys(
    samples: Sequence[TrainingSample],
    vae_identity: str,
    normalisation: str,
    overrides: Optional[dict[TrainingSample, str]] = None,
) -> list[str]:
    """Each sample's entry key; ``overrides`` maps samples whose entry was kept by a sync scan."""
    overrides = overrides or {}
    return [overrides.get(sample) or latent_key(sample, vae_identity, normalisation) for sample in samples]
