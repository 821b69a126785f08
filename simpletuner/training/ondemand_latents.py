"""``--vae_cache_ondemand``: training starts before the latent cache is complete.

The pass before training (training/caches.py) is skipped for latents; each
batch's missing entries are encoded when the batch is first collated, by
the same code and with the same per-entry seeds as that pass
(:func:`~simpletuner.caching.latents.encode_entries`), into the same
atomic, content-keyed entries.  A second run therefore finds them, and a
run trains on exactly the latents the pre-encoding run would have: the
result is the same given the same batch order.

The VAE is loaded at the first missing entry and stays loaded while
training, since any later batch may need it.  An image that no longer
decodes cannot be left out of a plan whose steps are already counted, so
it stops the run naming the file; the pre-encoding pass (without this
option) leaves such images out before training starts.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from simpletuner.caching.latents import encode_entries
from simpletuner.data.records import TrainingSample
from simpletuner.errors import DataError

logger = logging.getLogger(__name__)


class OnDemandLatents:
    """Encodes the latents a batch needs that the cache does not hold yet."""

    def __init__(
        self, load_vae: Callable[[], Any], encode: Callable, load_pixels: Callable[[TrainingSample], Any],
        batch_size: int,
    ) -> None:
        self.load_vae = load_vae
        self.encode = encode
        self.load_pixels = load_pixels
        self.batch_size = batch_size
        self.encoded = 0  # entries written by this run, for the log and for tests

    def ensure(self, lookup: Any, samples: Sequence[TrainingSample]) -> None:
        """Write the entries of ``samples`` that are missing from ``lookup``'s stores."""
        missing: dict[str, list] = {}
        for sample in dict.fromkeys(samples):  # a sample repeated in a batch is encoded once
            if lookup.remembers(sample):
                continue
            key = lookup.latent_key(sample)
            store = lookup.latent_stores[sample.dataset_id]
            if not store.has(key):
                missing.setdefault(sample.dataset_id, []).append((sample, key))
        for dataset_id, entries in missing.items():
            encoded, failed = encode_entries(entries, lookup.latent_stores[dataset_id], self.load_vae(),
                                             self.encode, self.load_pixels, self.batch_size)
            if failed:
                raise DataError(
                    f"dataset '{dataset_id}': {failed[0]} could not be decoded while encoding its latent on demand "
                    "(--vae_cache_ondemand); remove or replace the file and resume, or run without "
                    "--vae_cache_ondemand, which leaves undecodable images out before training"
                )
            self.encoded += encoded
            logger.debug("dataset '%s': %d latent(s) encoded on demand", dataset_id, encoded)
