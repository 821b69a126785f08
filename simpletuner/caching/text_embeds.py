"""Encoding captions into the on-disk text-embed cache."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from simpletuner.caching.completeness import check_entries
from simpletuner.caching.keys import text_key
from simpletuner.caching.latents import CacheReport, share_of
from simpletuner.caching.overlap import WriteBehind
from simpletuner.caching.store import TensorStore

# The empty caption is what caption dropout trains with and what classifier-free
# guidance contrasts against, so every text-embed cache holds it.
EMPTY_PROMPT = ""


def build_text_cache(
    captions: Sequence[str],
    encoder_identity: str,
    store: TensorStore,
    load_encoders: Callable[[], Any],
    encode: Callable[[Any, list[str]], list[dict[str, torch.Tensor]]],
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
    show_progress: bool = True,
    extra_prompts: Iterable[str] = (EMPTY_PROMPT,),
) -> CacheReport:
    """Encode this process's share of the distinct captions not yet stored.

    Shares are split as :func:`~simpletuner.caching.latents.share_of` does;
    the report counts this process's share.  Encoders load only if needed.

    ``extra_prompts`` are cached beside the captions (the empty prompt by
    default; validation prompts once validation exists) and counted with them.
    """
    share = share_of(sorted(set(captions) | set(extra_prompts)), shard)
    check = check_entries(store, [text_key(c, encoder_identity) for c in share])
    mine = [share[i] for i in check.missing]
    report = CacheReport(reused=len(share) - len(mine), damaged=check.damaged)
    if not mine:
        return report
    encoders = load_encoders()
    progress = tqdm(total=len(mine), desc="Caching text embeds", disable=not show_progress, unit="prompt")
    with WriteBehind(store) as writer:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            for caption, tensors in zip(chunk, encode(encoders, chunk)):
                writer.save(text_key(caption, encoder_identity), tensors)
            report.encoded += len(chunk)
            progress.update(len(chunk))
    progress.close()
    return report
