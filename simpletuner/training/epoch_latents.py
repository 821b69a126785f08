"""Fresh random crops every epoch, for datasets with ``vae_cache_clear_each_epoch``.

Epoch 0 trains the crops the data plan drew at start-up.  Each later epoch
draws a new crop window per image from (run seed, epoch, dataset, path), in
the same intermediate image and for the same bucket, so the sampler's
batches and SDXL's micro-conditioning stay consistent; only the window moves.
At the first batch of a new epoch the previous epoch's latents are deleted
and the new crops encoded, with the VAE the caches kept loaded for this.

Every draw is a pure function of the seed and epoch, and each entry's VAE
posterior has its own seed, so a resumed run encodes exactly the latents
the uninterrupted run trained on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from simpletuner.caching.latents import build_latent_cache, share_of
from simpletuner.caching.store import TensorStore
from simpletuner.data.buckets import crop_offset
from simpletuner.data.records import TrainingSample
from simpletuner.errors import DataError

logger = logging.getLogger(__name__)


def epoch_crop(sample: TrainingSample, seed: int, epoch: int) -> TrainingSample:
    """``sample`` with the random crop window of ``epoch`` (epoch 0: the planned one)."""
    if epoch == 0:
        return sample
    (inter_h, inter_w), (target_h, target_w) = sample.intermediate_size, sample.target_size
    digest = hashlib.sha256(f"epoch-crop|{seed}|{epoch}".encode()).hexdigest()
    top, left = crop_offset(
        inter_h - target_h, inter_w - target_w, "random", int(digest[:15], 16),
        sample.dataset_id, sample.record.relative_path,
    )
    return replace(sample, crop_top_left=(top, left))


class EpochCrops:
    """Maps samples to their epoch's crop and keeps the latent cache holding that epoch."""

    def __init__(
        self,
        samples: Mapping[str, Sequence[TrainingSample]],
        seed: int,
        lookup: Any,
        load_vae: Callable[[], Any],
        encode: Callable,
        load_pixels: Callable[[TrainingSample], Any],
        batch_size: int,
        accelerator: Any,
    ) -> None:
        # Samples a sync scan moved follow an entry encoded elsewhere: there is
        # no crop of theirs to redraw, so they keep that entry.
        self.samples = {d: [s for s in members if s not in lookup.key_overrides] for d, members in samples.items()}
        self.seed = seed
        self.lookup = lookup
        self.load_vae = load_vae
        self.encode = encode
        self.load_pixels = load_pixels
        self.batch_size = batch_size
        self.accelerator = accelerator
        self.epoch = 0  # the epoch whose latents the cache holds

    def samples_for(self, samples: list[TrainingSample], epoch: int) -> list[TrainingSample]:
        if epoch != self.epoch:
            self._refresh(epoch)
        moved = self.lookup.key_overrides
        return [
            epoch_crop(s, self.seed, epoch) if s.dataset_id in self.samples and s not in moved else s
            for s in samples
        ]

    def _refresh(self, epoch: int) -> None:
        shard = (self.accelerator.process_index, self.accelerator.num_processes)
        # Another rank may still be reading the old entries for its last batch.
        self.accelerator.wait_for_everyone()
        for dataset_id, members in self.samples.items():
            store: TensorStore = self.lookup.latent_stores[dataset_id]
            old = [epoch_crop(s, self.seed, self.epoch) for s in members]
            new = [epoch_crop(s, self.seed, epoch) for s in members]
            new_keys = [self.lookup.latent_key(s) for s in new]
            keep = set(new_keys)
            for key in share_of([self.lookup.latent_key(s) for s in old], shard):
                if key not in keep:  # a window with no room to move keeps its entry
                    store.remove(key)
            report = build_latent_cache(
                new, new_keys, store, self.load_vae, self.encode, self.load_pixels, self.batch_size,
                shard=shard, show_progress=False,
            )
            if report.failed:
                raise DataError(
                    f"dataset '{dataset_id}': {len(report.failed)} image(s) could no longer be decoded when "
                    f"re-cropping for epoch {epoch} (first: {report.failed[0]}); restore the files and resume"
                )
            self.lookup.forget(old)
            logger.info("dataset '%s' latents re-encoded with new crops for epoch %d: %s", dataset_id, epoch, report)
        self.accelerator.wait_for_everyone()
        self.epoch = epoch
