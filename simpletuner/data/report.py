"""The arithmetic of an epoch, done before training and printed: no silent zero.

:func:`check_buckets` counts images per bucket per dataset, the batches each
bucket fills (1 + ``repeats`` passes), each dataset's share of an epoch
under the sampling policy (:mod:`simpletuner.data.schedule`) and the steps
per epoch, exactly as :class:`~simpletuner.data.sampler.BucketBatchSampler`
will yield them.  A run where nothing can be batched fails here with a
message naming each dataset and its buckets; datasets or buckets too small
for a batch while others are fine come back as warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from simpletuner.data.records import TrainingSample
from simpletuner.data.schedule import SamplingPolicy, quotas
from simpletuner.errors import DataError

Bucket = Tuple[int, int]  # (width, height)
# Bucket rows per dataset in the start-up table; a 40-bucket dataset would otherwise fill the screen.
BUCKET_ROWS = 12


def group_by_bucket(samples: Sequence[TrainingSample]) -> Dict[Bucket, List[TrainingSample]]:
    """Samples by bucket, each list sorted by path so caller order cannot change the epoch order."""
    groups: Dict[Bucket, List[TrainingSample]] = {}
    for sample in samples:
        groups.setdefault(sample.bucket, []).append(sample)
    for members in groups.values():
        members.sort(key=lambda s: s.record.relative_path)
    return dict(sorted(groups.items()))


def batches_in_bucket(count: int, repeats: int, batch_size: int, prune: bool = True) -> int:
    """Batches a bucket of ``count`` images fills in one pass: only complete ones when
    pruning, else also the last, which the sampler fills up with repeats of the bucket's images."""
    seen = count * (1 + repeats)
    return seen // batch_size if prune else -(-seen // batch_size)


@dataclass(frozen=True)
class BucketReport:
    """Images per bucket and batches per dataset, as the sampler will see them."""

    batch_size: int
    world_size: int
    counts: Dict[str, Dict[Bucket, int]]  # dataset id -> bucket -> images
    repeats: Dict[str, int]
    batches: Dict[str, int]  # dataset id -> its own batches per pass, all ranks together
    warnings: Tuple[str, ...]
    policy: SamplingPolicy = field(default_factory=SamplingPolicy)
    quota: Dict[str, int] = field(default_factory=dict)  # dataset id -> batches it gives each epoch

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch per rank; equals BucketBatchSampler.batches_per_epoch()."""
        quota = self.quota or self.batches
        return sum(quota.values()) // self.world_size

    def table(self, epoch_line: bool = True, bucket_rows: int = BUCKET_ROWS) -> str:
        """Per dataset and bucket: images, batches, and what is not trained on; then the epoch.

        A dataset with more than ``bucket_rows`` buckets shows its largest
        ones and one row adding up the rest (--print_sampler_statistics: all).
        """
        lines = [f"{'dataset':<24} {'bucket':>11} {'images':>9} {'batches':>9}  note"]
        for dataset_id, buckets in self.counts.items():
            repeats = self.repeats.get(dataset_id, 0)
            shown, rest = _split_rows(buckets, bucket_rows)
            for (width, height), count in shown.items():
                batches = batches_in_bucket(count, repeats, self.batch_size, self.policy.prune)
                note = f"fewer than a batch of {self.batch_size}: not trained on" if batches == 0 else ""
                lines.append(f"{dataset_id:<24} {f'{width}x{height}':>11} {count:>9,} {batches:>9,}  {note}".rstrip())
            if rest:
                lines.append(self._rest_line(dataset_id, rest, repeats))
            if not buckets:
                lines.append(f"{dataset_id:<24} {'-':>11} {0:>9} {0:>9}  no usable images")
            lines.append(self._dataset_line(dataset_id, buckets, repeats))
        if epoch_line:
            lines.append(
                f"batch size {self.batch_size} x {self.world_size} process(es), sampling {self.policy.mode}: "
                f"{self.batches_per_epoch:,} steps per epoch"
            )
        return "\n".join(lines)

    def _rest_line(self, dataset_id: str, rest: Mapping[Bucket, int], repeats: int) -> str:
        counted = [batches_in_bucket(n, repeats, self.batch_size, self.policy.prune) for n in rest.values()]
        untrained = sum(1 for batches in counted if batches == 0)
        note = "smaller buckets" + (f", {untrained} of them not trained on" if untrained else "")
        return (f"{dataset_id:<24} {f'+{len(rest)} more':>11} {sum(rest.values()):>9,} {sum(counted):>9,}  "
                f"{note}")

    def _dataset_line(self, dataset_id: str, buckets: Mapping[Bucket, int], repeats: int) -> str:
        images = sum(buckets.values())
        own = self.batches.get(dataset_id, 0)
        given = self.quota.get(dataset_id, own) if self.quota else own
        parts = [f"{images:,} images"]
        if repeats:
            parts.append(f"each seen {1 + repeats}x")
        if own != given:  # the same figure twice reads as two different things
            parts.append(f"{own:,} batches per pass")
        probability = self.policy.probability.get(dataset_id, 1.0)
        if probability != 1.0:
            parts.append(f"probability {probability:g}")
        if dataset_id in self.policy.ignore_epochs:
            parts.append("ignore_epochs")
        parts.append(f"{given:,} batches per epoch")
        return f"{'':<24} {'total':>11} " + ", ".join(parts)


def _split_rows(buckets: Mapping[Bucket, int], limit: int) -> Tuple[Dict[Bucket, int], Dict[Bucket, int]]:
    """(the ``limit`` largest buckets in bucket order, the others); all shown when one row would be saved."""
    if len(buckets) <= limit + 1:
        return dict(buckets), {}
    largest = set(sorted(buckets, key=lambda b: (-buckets[b], b))[:limit])
    return ({b: n for b, n in buckets.items() if b in largest},
            {b: n for b, n in buckets.items() if b not in largest})


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
    policy: Optional[SamplingPolicy] = None,
) -> BucketReport:
    """Count images per bucket; raise DataError when no batch can be formed at all.

    Buckets (or whole datasets) too small for a batch while others are fine
    come back as ``warnings``: their images are simply not trained on.
    """
    policy = policy or getattr(samples, "policy", None) or SamplingPolicy()
    repeats = {d: int((repeats or {}).get(d, 0)) for d in samples}
    counts: Dict[str, Dict[Bucket, int]] = {}
    batches: Dict[str, int] = {}
    warnings: List[str] = []
    for dataset_id, dataset_samples in samples.items():
        buckets = {bucket: len(members) for bucket, members in group_by_bucket(dataset_samples).items()}
        counts[dataset_id] = buckets
        batches[dataset_id] = sum(batches_in_bucket(n, repeats[dataset_id], batch_size, policy.prune)
                                  for n in buckets.values())
        if policy.prune:  # unpruned, every bucket is trained on
            warnings.extend(_dataset_warnings(dataset_id, buckets, repeats[dataset_id], batch_size, batches))
        elif not buckets:
            warnings.append(f"dataset {dataset_id!r} has no usable images; check its folder and the discovery summary")
    quota = quotas(batches, policy)
    for dataset_id, own in batches.items():
        if own and not quota.get(dataset_id):
            warnings.append(f"dataset {dataset_id!r} has probability 0: it is not sampled")
    report = BucketReport(batch_size, world_size, counts, repeats, batches, tuple(warnings), policy, quota)
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
            "it will not be trained on: add images, raise its repeats or lower --train_batch_size"
        ]
    small = {b: n for b, n in buckets.items() if batches_in_bucket(n, repeats, batch_size) == 0}
    if not small:
        return []
    return [
        f"dataset {dataset_id!r}: {len(small)} bucket(s) smaller than the batch size {batch_size} "
        f"are not trained on ({_describe_buckets(small)}); raise repeats, lower --train_batch_size, "
        "or crop to fewer shapes (crop: true with crop_aspect square)"
    ]


def _no_batches_message(report: BucketReport) -> str:
    per_dataset = "; ".join(
        f"dataset {dataset_id!r} ({_describe_buckets(buckets)}"
        + (f", each seen {1 + report.repeats[dataset_id]}x" if report.repeats.get(dataset_id) else "")
        + ")"
        for dataset_id, buckets in report.counts.items()
    )
    processes = f" across {report.world_size} processes" if report.world_size > 1 else ""
    if any(report.batches.values()):
        return (f"no dataset with a non-zero probability can fill a batch of {report.batch_size}{processes}: "
                f"{per_dataset}; raise a probability above 0 or lower --train_batch_size")
    return (
        f"no bucket holds enough images for a batch of {report.batch_size}{processes}: {per_dataset}; "
        "lower --train_batch_size, add images, or use crop with crop_aspect square so images share a bucket"
    )
