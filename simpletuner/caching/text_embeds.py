"""Encoding captions into the on-disk text-embed cache."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from simpletuner.caching.keys import text_key
from simpletuner.caching.latents import CacheReport
from simpletuner.caching.store import TensorStore


def build_text_cache(
    captions: Sequence[str],
    encoder_identity: str,
    store: TensorStore,
    load_encoders: Callable[[], Any],
    encode: Callable[[Any, list[str]], list[dict[str, torch.Tensor]]],
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
    show_progress: bool = True,
) -> CacheReport:
    """Encode each distinct caption not yet stored.  Encoders load only if needed."""
    unique = sorted(set(captions))
    missing = [c for c in unique if not store.is_intact(text_key(c, encoder_identity))]
    report = CacheReport(reused=len(unique) - len(missing))
    report.damaged = sum(store.has(text_key(c, encoder_identity)) for c in missing)
    rank, world_size = shard
    mine = missing[rank::world_size]
    if not mine:
        return report
    encoders = load_encoders()
    progress = tqdm(total=len(mine), desc="Caching text embeds", disable=not show_progress, unit="prompt")
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        for caption, tensors in zip(chunk, encode(encoders, chunk)):
            store.save(text_key(caption, encoder_identity), tensors)
        report.encoded += len(chunk)
        progress.update(len(chunk))
    progress.close()
    return report
