"""Bucket-pure, deterministic, resumable batches across datasets.

A batch is ``batch_size`` samples of one bucket of one dataset, because a
batch's latents must share a shape.  An epoch is every complete batch every
dataset's buckets can fill (each sample 1 + ``repeats`` times), in an order
that depends only on (seed, epoch), so a run is reproducible and a resumed
run continues the epoch exactly where it stopped: :meth:`state_dict` holds
the epoch and the number of batches this rank has consumed.

With several processes every rank walks the same global order and takes
every ``world_size``-th batch; the tail that cannot be split evenly is
dropped, so all ranks step the same number of times and never share a batch.

:func:`check_buckets` does the same arithmetic up front and turns "the run
silently trains on nothing" into an error naming the dataset and its
bucket sizes.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from simpletuner.data.records import TrainingSample
from simpletuner.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Bucket = Tuple[int, int]  # (width, height)
_BatchRef = Tuple[str, Bucket, Tuple[int, ...]]  # dataset id, bucket, indices into that bucket


def _group(samples: Sequence[TrainingSample]) -> Dict[Bucket, List[TrainingSample]]:
    """Samples by bucket, each list sorted by path so caller order cannot change the epoch order."""
    groups: Dict[Bucket, List[TrainingSample]] = {}
    for sample in samples:
        groups.setdefault(sample.bucket, []).append(sample)
    for members in groups.values():
        members.sort(key=lambda s: s.record.relative_path)
    return dict(sorted(groups.items()))


def _batches_in_bucket(count: int, repeats: int, batch_size: int) -> int:
    return (count * (1 + repeats)) // batch_size


class BucketBatchSampler:
    """Yields lists of :class:`TrainingSample`, one bucket of one dataset per list.

    ``samples`` maps dataset id to that dataset's planned samples;
    ``repeats`` maps dataset id to its ``repeats`` (0 when absent).
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
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"train_batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.repeats = {dataset_id: int((repeats or {}).get(dataset_id, 0)) for dataset_id in samples}
        self._groups = {dataset_id: _group(samples[dataset_id]) for dataset_id in sorted(samples)}
        self._global_batches = sum(
            _batches_in_bucket(len(members), self.repeats[dataset_id], batch_size)
            for dataset_id, groups in self._groups.items()
            for members in groups.values()
        )
        self._fingerprint = self._compute_fingerprint()
        self.epoch = 0
        self.position = 0  # batches of the current epoch this rank has yielded
        self._cached_epoch: Optional[int] = None
        self._cached_order: List[_BatchRef] = []

    # --- arithmetic ---------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (the same for every rank and epoch)."""
        return self._global_batches // self.world_size

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # --- order ------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> List[_BatchRef]:
        """This rank's batches for ``epoch``; a pure function of (seed, epoch, samples)."""
        if self._cached_epoch == epoch:
            return self._cached_order
        rng = random.Random(f"bucket-sampler|{self.seed}|{epoch}")
        batches: List[_BatchRef] = []
        for dataset_id, groups in self._groups.items():
            passes = 1 + self.repeats[dataset_id]
            for bucket, members in groups.items():
                order: List[int] = []
                for _ in range(passes):  # one shuffled pass per repeat: fewer duplicates per batch
                    permutation = list(range(len(members)))
                    rng.shuffle(permutation)
                    order.extend(permutation)
                usable = len(order) - len(order) % self.batch_size
                for start in range(0, usable, self.batch_size):
                    batches.append((dataset_id, bucket, tuple(order[start : start + self.batch_size])))
        rng.shuffle(batches)
        per_rank = len(batches) // self.world_size
        mine = batches[: per_rank * self.world_size][self.rank :: self.world_size]
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
    def _compute_fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.batch_size}|{self.world_size}|{sorted(self.repeats.items())}".encode())
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
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``; when the data or settings changed, keep the epoch and warn."""
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0))
        if state.get("fingerprint") != self._fingerprint or state.get("seed") != self.seed:
            logger.warning(
                "the datasets, batch size, repeats, world size or seed changed since the checkpoint; "
                "epoch %d continues with a new batch order",
                self.epoch,
            )
            self.position = min(self.position, self.batches_per_epoch())


@dataclass(frozen=True)
class BucketReport:
    """Images per bucket and batches per dataset, as the sampler will see them."""

    batch_size: int
    world_size: int
    counts: Dict[str, Dict[Bucket, int]]  # dataset id -> bucket -> images
    repeats: Dict[str, int]
    batches: Dict[str, int]  # dataset id -> batches per epoch, all ranks together
    warnings: Tuple[str, ...]

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch per rank; equals BucketBatchSampler.batches_per_epoch()."""
        return sum(self.batches.values()) // self.world_size

    def table(self) -> str:
        """A plain-text table: dataset, bucket, images, batches."""
        lines = [f"{'dataset':<24} {'bucket':>11} {'images':>7} {'batches':>8}"]
        for dataset_id, buckets in self.counts.items():
            passes = 1 + self.repeats.get(dataset_id, 0)
            for (width, height), count in buckets.items():
                batches = _batches_in_bucket(count, passes - 1, self.batch_size)
                lines.append(f"{dataset_id:<24} {f'{width}x{height}':>11} {count:>7} {batches:>8}")
            if not buckets:
                lines.append(f"{dataset_id:<24} {'-':>11} {0:>7} {0:>8}")
        lines.append(
            f"batch size {self.batch_size} x {self.world_size} process(es): "
            f"{self.batches_per_epoch} steps per epoch"
        )
        return "\n".join(lines)


def _describe_buckets(buckets: Mapping[Bucket, int], limit: int = 8) -> str:
    if not buckets:
        return "no images"
    parts = [f"{w}x{h}: {n}" for (w, h), n in sorted(buckets.items(), key=lambda kv: -kv[1])]
    extra = len(parts) - limit
    return ", ".join(parts[:limit]) + (f", and {extra} more" if extra > 0 else "")


def check_buckets(
    samples: Mapping[str, Sequence[TrainingSample]],
    batch_size: int,
    repeats: Optional[Mapping[str, int]] = None,
    world_size: int = 1,
) -> BucketReport:
    """Count images per bucket; raise DataError when no batch can be formed at all.

    Buckets (or whole datasets) too small for a batch while others are fine
    come back as ``warnings``: their images are simply not trained on.
    """
    repeats = {d: int((repeats or {}).get(d, 0)) for d in samples}
    counts: Dict[str, Dict[Bucket, int]] = {}
    batches: Dict[str, int] = {}
    warnings: List[str] = []
    for dataset_id, dataset_samples in samples.items():
        buckets = {bucket: len(members) for bucket, members in _group(dataset_samples).items()}
        counts[dataset_id] = buckets
        batches[dataset_id] = sum(
            _batches_in_bucket(n, repeats[dataset_id], batch_size) for n in buckets.values()
        )
        warnings.extend(_dataset_warnings(dataset_id, buckets, repeats[dataset_id], batch_size, batches))
    report = BucketReport(batch_size, world_size, counts, repeats, batches, tuple(warnings))
    if report.batches_per_epoch == 0:
        raise DataError(_no_batches_message(report))
    return report


def _dataset_warnings(
    dataset_id: str, buckets: Mapping[Bucket, int], repeats: int, batch_size: int, batches: Mapping[str, int]
) -> List[str]:
    if not buckets:
        return [f"dataset {dataset_id!r} has no usable images; check its folder and the discovery summary"]
    if batches[dataset_id] == 0:
        return [
            f"dataset {dataset_id!r} yields no batch of {batch_size} ({_describe_buckets(buckets)}); "
            "it will not be trained on: add images or lower --train_batch_size"
        ]
    small = {b: n for b, n in buckets.items() if _batches_in_bucket(n, repeats, batch_size) == 0}
    if not small:
        return []
    return [
        f"dataset {dataset_id!r}: {len(small)} bucket(s) smaller than the batch size {batch_size} "
        f"are not trained on ({_describe_buckets(small)})"
    ]


def _no_batches_message(report: BucketReport) -> str:
    per_dataset = "; ".join(
        f"dataset {dataset_id!r} ({_describe_buckets(buckets)}"
        + (f", each seen {1 + report.repeats[dataset_id]}x" if report.repeats.get(dataset_id) else "")
        + ")"
        for dataset_id, buckets in report.counts.items()
    )
    processes = f" across {report.world_size} processes" if report.world_size > 1 else ""
    return (
        f"no bucket holds enough images for a batch of {report.batch_size}{processes}: {per_dataset}; "
        "lower --train_batch_size, add images, or use crop with crop_aspect square so images share a bucket"
    )
