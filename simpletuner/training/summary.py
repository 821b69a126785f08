"""The start-up summary, and the one that follows when caching changed its figures.

:func:`log_summary` prints, once, on the main process: the model, each
dataset's files, buckets and batches, the notes on what the plan does that
the config does not say (rounded sizes, upscaling, unused caption files),
how regularisation datasets train, and the epoch and step arithmetic, each
figure once.  It returns the :class:`Totals` it printed, so that
:func:`log_changed_totals` can reprint what changed after images were left
out while caching (an image that cannot be decoded is only found then).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from simpletuner.data.pipeline import PreparedData
from simpletuner.training.regularisation import log_regularisation_plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Totals:
    """The figures the summary printed that caching can still change."""

    images: dict[str, int]  # dataset id -> images trained on
    batches: dict[str, int]  # dataset id -> batches it gives each epoch
    batches_per_epoch: int  # per process
    total_steps: int


def totals_of(data: PreparedData, total_steps: int) -> Totals:
    report = data.report
    return Totals(
        images={d: sum(buckets.values()) for d, buckets in report.counts.items()},
        batches=dict(report.quota or report.batches),
        batches_per_epoch=report.batches_per_epoch,
        total_steps=total_steps,
    )


def epoch_line(config: Any, batches_per_epoch: int, num_processes: int, total_steps: int) -> str:
    """Steps per epoch and in total, with how they are made up."""
    accumulation = config.gradient_accumulation_steps
    steps = batches_per_epoch / accumulation
    made_of = f"batch {config.train_batch_size}" + (f" x accumulation {accumulation}" if accumulation > 1 else "")
    counted = f"{batches_per_epoch} batches, " if accumulation > 1 else ""
    return f"{counted}{steps:g} steps per epoch ({made_of} x {num_processes} process(es)); {total_steps} steps in total"


def log_summary(
    config: Any, family_name: str, trainable: Any, data: PreparedData, total_steps: int, num_processes: int,
    resume_path: Optional[Path],
) -> Totals:
    """Log the start-up summary; returns the figures it printed."""
    logger.info("model: %s (%s, %s%s)", config.pretrained_model_name_or_path, family_name, config.model_type,
                trainable.summary())
    for line in data.table(epoch_line=False).splitlines():
        logger.info(line)
    for note in data.notes:
        logger.log(note.level, note.text)
    sampled = [d for d in data.backends.image_datasets if (data.report.quota or data.report.batches).get(d.id)]
    # A dataset that yields no batch was already said to be left out; do not describe how it trains.
    log_regularisation_plan(sampled, trainable)
    line = epoch_line(config, data.report.batches_per_epoch, num_processes, total_steps)
    logger.info("sampling %s: %s%s", data.policy.mode, line,
                f", resuming from {resume_path.name}" if resume_path else "")
    return totals_of(data, total_steps)


def log_changed_totals(before: Totals, after: Totals, config: Any) -> None:
    """Reprint the figures that changed since the summary (images left out while caching)."""
    if before == after:
        return
    parts = []
    for dataset_id, images in after.images.items():
        was_images, was_batches = before.images.get(dataset_id, 0), before.batches.get(dataset_id, 0)
        batches = after.batches.get(dataset_id, 0)
        if (images, batches) != (was_images, was_batches):
            parts.append(f"dataset {dataset_id!r} now {images} images (was {was_images}), "
                         f"{batches} batches per epoch (was {was_batches})")
    accumulation = config.gradient_accumulation_steps
    if after.batches_per_epoch != before.batches_per_epoch:
        parts.append(f"{after.batches_per_epoch / accumulation:g} steps per epoch "
                     f"(was {before.batches_per_epoch / accumulation:g})")
    if after.total_steps != before.total_steps:
        parts.append(f"{after.total_steps} steps in total (was {before.total_steps})")
    logger.warning("images were left out while caching, so the summary above changed: %s", "; ".join(parts))
