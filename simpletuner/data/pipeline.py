"""From multidatabackend.json to planned, bucket-checked training samples.

This is the one place the data stages are chained: load the dataset config,
discover each dataset's images, find faces where ``crop_style`` is ``face``,
plan each image's geometry (bucket, resize, crop), note setting changes since
the last run, and count what the sampler will be able to batch under the
sampling policy.  The dataset named by ``--eval_dataset_id`` is planned and
cached like the others but held out (:attr:`PreparedData.held_out`): the
sampler and the counts never see it.  :class:`PreparedData` holds the result; its
:meth:`~PreparedData.table` is the start-up summary and
:meth:`~PreparedData.sampler` builds the matching sampler.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from simpletuner.data.buckets import plan_dataset
from simpletuner.data.captions import REASON_NO_CAPTION
from simpletuner.data.discovery import REASON_UNDECODABLE, DiscoveryResult, discover, mark_undecodable, shown
from simpletuner.data.csv_source import fetch_csv_images
from simpletuner.data.drift import describe_changes, record_settings
from simpletuner.data.huggingface_discovery import discover_huggingface, mark_rows_undecodable
from simpletuner.data.notes import Note, dataset_notes
from simpletuner.data.quarantine import QuarantinePolicy, move_to_quarantine
from simpletuner.data.records import TrainingSample
from simpletuner.data.report import BUCKET_ROWS
from simpletuner.data.sampler import BucketBatchSampler, BucketReport, check_buckets
from simpletuner.data.schedule import SamplingPolicy
from simpletuner.data.schema import (
    DATASET_DEFAULT_OPTIONS,
    DataBackendConfig,
    DatasetConfig,
    load_data_backend_config,
)
from simpletuner.errors import DataError
from simpletuner.evaluation.dataset import check_eval_dataset, eval_dataset_id, held_out_note, hold_out

logger = logging.getLogger(__name__)



class SampleSets(dict):
    """dataset id -> planned samples, carrying the sampling ``policy`` the sampler must follow."""

    def __init__(self, samples: Mapping[str, list], policy: SamplingPolicy) -> None:
        super().__init__(samples)
        self.policy = policy


@dataclass
class PreparedData:
    backends: DataBackendConfig
    samples: SampleSets  # dataset id -> samples (a dict carrying .policy)
    discovery: dict[str, DiscoveryResult]
    skipped_by_planning: dict[str, dict[str, list[str]]]
    report: BucketReport
    notes: list[Note] = field(default_factory=list)  # what the plan does that the config does not say
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)  # skip reasons whose files move away
    examples: int = 3  # file names shown per skip reason (--print_filenames: all)
    held_out: dict[str, list[TrainingSample]] = field(default_factory=dict)  # --eval_dataset_id: never trained
    bucket_rows: int = BUCKET_ROWS  # bucket rows per dataset in the table (--print_sampler_statistics: all)

    def cached_sets(self) -> dict[str, list[TrainingSample]]:
        """Every dataset whose caches the run needs: the trained ones and the held-out one."""
        return {**self.samples, **self.held_out}

    def all_samples(self) -> list[TrainingSample]:
        return [s for samples in self.samples.values() for s in samples]

    @property
    def policy(self) -> SamplingPolicy:
        return self.samples.policy

    def table(self, epoch_line: bool = True) -> str:
        """The start-up summary: per dataset, files found and filtered by reason, then buckets and steps.

        ``epoch_line=False`` leaves out the closing steps-per-epoch line, for a
        caller that prints the figure in its own words (the trainer's summary).
        """
        lines = [found.summary(self.examples) for found in self.discovery.values()]
        lines.append(self.report.table(epoch_line, self.bucket_rows))
        return "\n".join(lines)

    def sampler(self, seed: int, rank: int = 0, world_size: int = 1) -> BucketBatchSampler:
        """The sampler that yields exactly what :attr:`report` counted."""
        return BucketBatchSampler(self.samples, self.report.batch_size, seed=seed, repeats=self.report.repeats,
                                  rank=rank, world_size=world_size, policy=self.policy)

    def replace_samples(self, dataset_id: str, samples: list[TrainingSample]) -> BucketReport:
        """Put ``samples`` in place of a dataset's plan (e.g. moved to other buckets) and recount."""
        if dataset_id in self.held_out:
            self.held_out[dataset_id] = samples
            return self.report
        self.samples[dataset_id] = samples
        self.report = check_buckets(self.samples, self.report.batch_size, self.report.repeats,
                                    self.report.world_size, self.policy)
        return self.report

    def exclude(self, failed: Mapping[str, Iterable[str]], reason: str = REASON_UNDECODABLE) -> BucketReport:
        """Drop images that failed later (e.g. could not be decoded while caching) and recount.

        ``failed`` maps dataset id to relative paths.  The images move to the
        dataset's skip summary under ``reason``, are marked in discovery.json
        so the next run skips them at discovery (until the file changes), and
        :attr:`report` is recomputed; DataError if no batch can be formed any more.
        """
        for dataset_id, paths in failed.items():
            paths = set(paths)
            if not paths:
                continue
            sets = self.held_out if dataset_id in self.held_out else self.samples
            sets[dataset_id] = [s for s in sets[dataset_id] if s.record.relative_path not in paths]
            self.discovery[dataset_id].filter_out({reason: paths})
            logger.warning("dataset %r: %d image(s) left out (%s): %s", dataset_id, len(paths), reason,
                           ", ".join(shown(p) for p in sorted(paths)[:5]) + (", ..." if len(paths) > 5 else ""))
            if reason == REASON_UNDECODABLE:
                dataset = self.backends.dataset(dataset_id)
                (mark_rows_undecodable if dataset.huggingface is not None else mark_undecodable)(dataset, paths)
            if reason in self.quarantine.reasons:
                moved = move_to_quarantine(self.backends.dataset(dataset_id), paths)
                if moved:
                    logger.warning(moved.summary())
        self.report = check_buckets(self.samples, self.report.batch_size, self.report.repeats,
                                    self.report.world_size, self.policy)
        return self.report


def load_backends(config: Any) -> DataBackendConfig:
    """Read and validate multidatabackend.json and reach its S3 buckets (no scanning, nothing written)."""
    from simpletuner.storage.datasets import check_remote_storages

    defaults = {name: getattr(config, name, None) for name in DATASET_DEFAULT_OPTIONS}
    backends = load_data_backend_config(config.data_backend_config, defaults)
    check_eval_dataset(config, backends)
    check_remote_storages(backends)
    return backends


def sampling_policy(config: Any, backends: DataBackendConfig) -> SamplingPolicy:
    return SamplingPolicy(
        mode=getattr(config, "data_backend_sampling", None) or "auto-weighting",
        probability={d.id: d.probability for d in backends.image_datasets},
        ignore_epochs=frozenset(d.id for d in backends.image_datasets if d.ignore_epochs),
        prune=not getattr(config, "disable_bucket_pruning", False),
    )


def prepare_training_data(
    config: Any, backends: DataBackendConfig, world_size: int = 1, show_progress: bool = True,
    dry_run: bool = False,
) -> PreparedData:
    """Discover, plan and count every image dataset.

    Nothing here depends on the run's seed: the same files and settings give
    the same plan (random crops included), so cached latents are found again.
    ``dry_run`` (--dry_run) changes nothing of the user's: no image is moved to
    quarantine and the dataset settings are not recorded, so the real run
    still reports what changed since the last one.
    """
    samples: dict[str, list[TrainingSample]] = {}
    notes: list[Note] = []
    discovery: dict[str, DiscoveryResult] = {}
    planning_skips: dict[str, dict[str, list[str]]] = {}
    quarantine = QuarantinePolicy() if dry_run else QuarantinePolicy.from_config(config)
    for dataset in backends.image_datasets:
        found, planned, skipped = plan_one(dataset, show_progress, getattr(config, "aspect_bucket_worker_count", None))
        notes.extend(dataset_notes(dataset, planned, found.records))
        moved = move_to_quarantine(dataset, quarantine.chosen(found.skipped)) if quarantine.reasons else None
        if moved:
            notes.append(Note(logging.WARNING, moved.summary()))
        discovery[dataset.id] = found
        samples[dataset.id] = planned
        planning_skips[dataset.id] = skipped
        if not dry_run:
            _note_drift(dataset, planned, getattr(config, "override_dataset_config", False))
    _check_not_empty(backends, discovery)
    held_out = hold_out(samples, eval_dataset_id(config))
    notes.extend(held_out_note(held_out, getattr(config, "num_eval_images", 0)))
    policy = sampling_policy(config, backends)
    repeats = {d.id: d.repeats for d in backends.image_datasets}
    sets = SampleSets(samples, policy)
    report = check_buckets(sets, config.train_batch_size, repeats, world_size, policy)
    for warning in report.warnings:
        logger.warning(warning)
    examples = sys.maxsize if getattr(config, "print_filenames", False) else 3
    rows = sys.maxsize if getattr(config, "print_sampler_statistics", False) else BUCKET_ROWS
    return PreparedData(backends, sets, discovery, planning_skips, report, notes, quarantine, examples, held_out,
                        rows)


def plan_one(
    dataset: DatasetConfig, show_progress: bool = True, workers: Optional[int] = None
) -> tuple[DiscoveryResult, list[TrainingSample], dict[str, list[str]]]:
    """One dataset discovered and planned: (what discovery found, the samples, paths skipped by reason).

    ``workers`` threads read image headers (--aspect_bucket_worker_count; None: discovery's own choice).
    """
    if dataset.csv is not None:
        fetch_csv_images(dataset, show_progress)
    if dataset.huggingface is not None:
        found = discover_huggingface(dataset, progress=show_progress)
    else:
        found = discover(dataset, progress=show_progress, workers=workers)
    planned, skipped = plan_dataset(found.records, dataset, _focus(dataset, found, show_progress))
    found.filter_out(skipped)
    return found, planned, skipped


def _focus(dataset: DatasetConfig, found: DiscoveryResult, show_progress: bool) -> Optional[dict]:
    if not (dataset.crop and dataset.crop_style == "face"):
        return None
    from simpletuner.data.faces import face_focus  # imports OpenCV only when a dataset needs it

    return face_focus(found.records, dataset, progress=show_progress)


def _note_drift(dataset: DatasetConfig, planned: list[TrainingSample], override: bool) -> None:
    drift = record_settings(dataset, planned, override)
    if drift.changes:
        logger.log(logging.WARNING if drift.plan_changed else logging.INFO, describe_changes(dataset, drift))


def _what_to_do(dataset: DatasetConfig, found: DiscoveryResult) -> str:
    """The fix for an empty dataset: for images that all lack a caption file, that (the usual first mistake)."""
    if dataset.caption_strategy == "textfile" and found.files_found and set(found.skipped) == {REASON_NO_CAPTION}:
        return ("none has a caption file beside it (photo_001.png + photo_001.txt); add them, or set "
                "caption_strategy filename or instanceprompt (with instance_prompt)")
    return "add .jpg/.png/.webp images, fix instance_data_dir, or see the skip reasons above"


def _check_not_empty(backends: DataBackendConfig, discovery: Mapping[str, DiscoveryResult]) -> None:
    """An empty dataset stops the run only when every dataset is empty; otherwise it is a warning."""
    empty = [d for d in backends.image_datasets if not discovery[d.id].records]
    for dataset in empty:
        found = discovery[dataset.id]
        message = (
            f"dataset {dataset.id!r}: no usable images in {dataset.instance_data_dir} "
            f"({found.summary().splitlines()[0].split(': ', 1)[1]}); {_what_to_do(dataset, found)}"
        )
        if len(empty) == len(backends.image_datasets):
            for line in found.summary().splitlines():
                logger.error(line)
            raise DataError(message)
        logger.warning(message + "; it is left out of this run")
