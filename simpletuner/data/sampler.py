"""Bucket-pure, deterministic, resumable batches across datasets.

A batch is ``batch_size`` samples of one bucket of one dataset, because a
batch's latents must share a shape.  Each dataset's batches for an epoch are
every complete batch its buckets can fill (each sample 1 + ``repeats``
times), and datasets are interleaved and shared as
:mod:`simpletuner.data.schedule` describes (``probability``,
``--data_backend_sampling``, ``ignore_epochs``).  The order depends only on
(seed, epoch), so a run is reproducible and a resumed run continues the
epoch exactly where it stopped: :meth:`state_dict` holds the epoch and the
number of batches this rank has consumed.

With several processes every rank walks the same global order and takes
every ``world_size``-th batch; the tail that cannot be split evenly is
dropped, so all ranks step the same number of times and never share a batch.

:func:`check_buckets` (in :mod:`simpletuner.data.report`, re-exported here)
does the same arithmetic up front and turns "the run silently trains on
nothing" into an error naming the dataset and its bucket sizes.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from simpletuner.data.records import TrainingSample
from simpletuner.data.report import (  # noqa: F401 - re-exported
    BucketReport,
    batches_in_bucket,
    check_buckets,
    group_by_bucket,
)
from simpletuner.data.schedule import SamplingPolicy, quotas, weights
from simpletuner.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Bucket = Tuple[int, int]  # (width, height)
_BatchRef = Tuple[str, Bucket, Tuple[int, ...]]  # dataset id, bucket, indices into that bucket


class BucketBatchSampler:
    """Yields lists of :class:`TrainingSample`, one bucket of one dataset per list.

    ``samples`` maps dataset id to that dataset's planned samples;
    ``repeats`` maps dataset id to its ``repeats`` (0 when absent);
    ``policy`` is how datasets are mixed (default: ``samples.policy`` when
    the mapping carries one, as :class:`~simpletuner.data.pipeline.PreparedData`'s
    does, else auto-weighting with probability 1 everywhere).
    Iterating yields the rest of the current epoch, then moves to the next.
    """

    def __init__(
        self,
        samples: Mapping[str, Sequence[TrainingSample]],
        batch_size: int,
        seed: int = 0,
        repeats: Optional[Mapping[str, int]] = None,
        rank: int = 0,
        world_size: int = 1,
        policy: Optional[SamplingPolicy] = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"train_batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.policy = policy or getattr(samples, "policy", None) or SamplingPolicy()
        self.repeats = {dataset_id: int((repeats or {}).get(dataset_id, 0)) for dataset_id in samples}
        self._groups = {dataset_id: group_by_bucket(samples[dataset_id]) for dataset_id in sorted(samples)}
        self._own = {
            dataset_id: sum(batches_in_bucket(len(m), self.repeats[dataset_id], batch_size, self.policy.prune)
                            for m in groups.values())
            for dataset_id, groups in self._groups.items()
        }
        self._weights = weights(self._own, self.policy)
        self._quota = quotas(self._own, self.policy)
        counted = [d for d, q in self._quota.items() if q and d not in self.policy.ignore_epochs]
        self._streamed = {d for d, q in self._quota.items() if q and counted and d in self.policy.ignore_epochs}
        self._global_batches = sum(self._quota.values())
        self._fingerprint = self._compute_fingerprint()
        self.epoch = 0
        self.position = 0  # batches of the current epoch this rank has yielded
        self._cached_epoch: Optional[int] = None
        self._cached_order: List[_BatchRef] = []
        self._passes: Dict[Tuple[str, int], List[_BatchRef]] = {}

    # --- arithmetic ---------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (the same for every rank and epoch)."""
        return self._global_batches // self.world_size

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # --- order ------------------------------------------------------------------------
    def _pass_batches(self, dataset_id: str, rng: random.Random) -> List[_BatchRef]:
        """One pass over a dataset (1 + repeats shuffled rounds per bucket), batches shuffled."""
        batches: List[_BatchRef] = []
        for bucket, members in self._groups[dataset_id].items():
            order: List[int] = []
            for _ in range(1 + self.repeats[dataset_id]):  # one shuffle per repeat: fewer duplicates per batch
                permutation = list(range(len(members)))
                rng.shuffle(permutation)
                order.extend(permutation)
            if not self.policy.prune:
                # --disable_bucket_pruning: complete the last batch from the start of this
                # pass's order (wrapping round as often as a bucket smaller than a batch needs).
                shortfall = -len(order) % self.batch_size
                order.extend(order[i % len(order)] for i in range(shortfall))
            usable = len(order) - len(order) % self.batch_size
            for start in range(0, usable, self.batch_size):
                batches.append((dataset_id, bucket, tuple(order[start : start + self.batch_size])))
        rng.shuffle(batches)
        return batches

    def _streamed_batches(self, dataset_id: str, epoch: int) -> List[_BatchRef]:
        """An ignore_epochs dataset's share of ``epoch``: the next slice of its endless stream of passes."""
        own, quota = self._own[dataset_id], self._quota[dataset_id]
        batches: List[_BatchRef] = []
        for index in range(epoch * quota, (epoch + 1) * quota):
            number = index // own
            key = (dataset_id, number)
            if key not in self._passes:
                if len(self._passes) > 64:
                    self._passes.clear()
                rng = random.Random(f"bucket-sampler|{self.seed}|{dataset_id}|pass|{number}")
                self._passes[key] = self._pass_batches(dataset_id, rng)
            batches.append(self._passes[key][index % own])
        return batches

    def _epoch_order(self, epoch: int) -> List[_BatchRef]:
        """This rank's batches for ``epoch``; a pure function of (seed, epoch, samples, policy)."""
        if self._cached_epoch == epoch:
            return self._cached_order
        rng = random.Random(f"bucket-sampler|{self.seed}|{epoch}")
        timed: List[Tuple[float, int, int, _BatchRef]] = []
        for position, dataset_id in enumerate(self._groups):
            if not self._quota[dataset_id]:
                continue
            if dataset_id in self._streamed:
                batches = self._streamed_batches(dataset_id, epoch)
            else:
                batches = self._pass_batches(dataset_id, rng)
            weight = self._weights[dataset_id]
            for k, ref in enumerate(batches):
                timed.append(((k + rng.random()) / weight, position, k, ref))
        timed.sort(key=lambda item: item[:3])
        order = [item[3] for item in timed]
        per_rank = len(order) // self.world_size
        mine = order[: per_rank * self.world_size][self.rank :: self.world_size]
        self._cached_epoch, self._cached_order = epoch, mine
        return mine

    def _materialise(self, ref: _BatchRef) -> List[TrainingSample]:
        dataset_id, bucket, indices = ref
        members = self._groups[dataset_id][bucket]
        return [members[i] for i in indices]

    def epoch_batches(self, epoch: int) -> List[List[TrainingSample]]:
        """All of this rank's batches for ``epoch``, without moving the sampler."""
        return [self._materialise(ref) for ref in self._epoch_order(epoch)]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[List[TrainingSample]]:
        order = self._epoch_order(self.epoch)
        while self.position < len(order):
            ref = order[self.position]
            self.position += 1  # counted before yielding: a checkpoint after this batch skips it
            yield self._materialise(ref)
        self.epoch += 1
        self.position = 0

    def stream(self) -> Iterator[List[TrainingSample]]:
        """Batches epoch after epoch, without end; the training loop stops by step count."""
        if self.batches_per_epoch() == 0:
            raise DataError("no complete batch can be formed; see the bucket table above")
        while True:
            yield from self

    # --- resumption ---------------------------------------------------------------------
    def _compute_fingerprint(self, world_size: Optional[int] = None) -> str:
        digest = hashlib.sha256()
        world_size = self.world_size if world_size is None else world_size
        digest.update(f"{self.batch_size}|{world_size}|{sorted(self.repeats.items())}".encode())
        digest.update(repr(self.policy.describe()).encode())
        for dataset_id, groups in self._groups.items():
            for bucket, members in groups.items():
                for sample in members:
                    key = f"{dataset_id}|{bucket}|{sample.record.relative_path}\n"
                    digest.update(key.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def state_dict(self) -> dict:
        """Where the sampler stands: enough for a new sampler to continue the same sequence."""
        epoch, position = self.epoch, self.position
        if position >= self.batches_per_epoch() > 0:
            epoch, position = epoch + 1, 0
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "batches_per_epoch": self.batches_per_epoch(),
            "fingerprint": self._fingerprint,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``; when the data or settings changed, keep the epoch and warn."""
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0))
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size and state.get("fingerprint") == self._compute_fingerprint(saved_world):
            # Only the process count changed: every rank walks the same global batch
            # order in turn, so the batches taken so far are the first position x
            # world of it, whatever the count; continue after them.
            self.position = self.position * saved_world // self.world_size
            logger.info("checkpoint written by %d process(es), resuming with %d: continuing the epoch's batch "
                        "order after its first %d batches", saved_world, self.world_size,
                        self.position * self.world_size)
            return
        if state.get("fingerprint") != self._fingerprint or state.get("seed") != self.seed:
            logger.warning(
                "the datasets, batch size, repeats, world size or seed changed since the checkpoint; "
                "epoch %d continues with a new batch order",
                self.epoch,
            )
            self.position = min(self.position, self.batches_per_epoch())
