"""From multidatabackend.json to planned, bucket-checked training samples.

This is the one place the data stages are chained: load the dataset config,
discover each dataset's images, plan each image's geometry (bucket, resize,
crop) and count what the sampler will be able to batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from simpletuner.data.buckets import plan_dataset
from simpletuner.data.discovery import DiscoveryResult, discover
from simpletuner.data.records import TrainingSample
from simpletuner.data.sampler import BucketReport, check_buckets
from simpletuner.data.schema import DataBackendConfig, load_data_backend_config
from simpletuner.errors import DataError

logger = logging.getLogger(__name__)

# Global options a dataset inherits when it does not set the key itself.
INHERITED_OPTIONS = (
    "resolution",
    "resolution_type",
    "crop",
    "crop_style",
    "crop_aspect",
    "caption_strategy",
    "minimum_image_size",
    "aspect_bucket_alignment",
)


@dataclass
class PreparedData:
    backends: DataBackendConfig
    samples: dict[str, list[TrainingSample]]  # dataset id -> samples
    discovery: dict[str, DiscoveryResult]
    skipped_by_planning: dict[str, dict[str, list[str]]]
    report: BucketReport

    def all_samples(self) -> list[TrainingSample]:
        return [s for samples in self.samples.values() for s in samples]


def load_backends(config: Any) -> DataBackendConfig:
    """Read and validate multidatabackend.json (no scanning, nothing written)."""
    defaults = {name: getattr(config, name) for name in INHERITED_OPTIONS}
    return load_data_backend_config(config.data_backend_config, defaults)


def prepare_training_data(
    config: Any, backends: DataBackendConfig, seed: int, world_size: int = 1, show_progress: bool = True
) -> PreparedData:
    samples: dict[str, list[TrainingSample]] = {}
    discovery: dict[str, DiscoveryResult] = {}
    planning_skips: dict[str, dict[str, list[str]]] = {}
    for dataset in backends.image_datasets:
        found = discover(dataset, progress=show_progress)
        if not found.records:
            raise DataError(
                f"dataset '{dataset.id}': no usable images in {dataset.instance_data_dir} "
                f"({found.summary()}); add .jpg/.png/.webp images or fix instance_data_dir"
            )
        planned, skipped = plan_dataset(found.records, dataset, seed)
        discovery[dataset.id] = found
        samples[dataset.id] = planned
        planning_skips[dataset.id] = skipped
        for reason, paths in skipped.items():
            logger.info("dataset '%s': %d images skipped (%s)", dataset.id, len(paths), reason)
    repeats = {d.id: d.repeats for d in backends.image_datasets}
    report = check_buckets(samples, config.train_batch_size, repeats, world_size)
    for warning in report.warnings:
        logger.warning(warning)
    return PreparedData(backends, samples, discovery, planning_skips, report)
