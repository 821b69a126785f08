"""Which dataset is held out for the evaluation loss, and which of its images are used.

The held-out dataset is an ordinary image dataset entry of
multidatabackend.json (every image key applies, and its latents and text
embeds are cached like any other's); naming it in ``--eval_dataset_id`` takes
it out of the sampler and the step count.  Keys that only shape sampling
(``repeats``, ``probability``, ``ignore_epochs``) do nothing for it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from simpletuner.data.notes import Note
from simpletuner.data.records import TrainingSample
from simpletuner.errors import ConfigError, DataError


def eval_dataset_id(config: Any) -> Optional[str]:
    """``--eval_dataset_id``, or None (configs built before the option existed have none)."""
    return getattr(config, "eval_dataset_id", None) or None


def check_eval_dataset(config: Any, backends: Any) -> None:
    """The id names an enabled image dataset, and another one is left to train on."""
    wanted = eval_dataset_id(config)
    if wanted is None:
        return
    ids = [d.id for d in backends.image_datasets]
    if wanted not in ids:
        disabled = " (it is disabled there)" if wanted in backends.disabled_ids else ""
        raise ConfigError(
            f"--eval_dataset_id {wanted!r} names no enabled image dataset in {backends.path}{disabled}; "
            f"use one of: {', '.join(ids)}"
        )
    if len(ids) == 1:
        raise ConfigError(
            f"--eval_dataset_id {wanted!r} is the only image dataset in {backends.path}, so nothing would be "
            "trained on; add a training dataset, or unset --eval_dataset_id"
        )


def hold_out(samples: dict[str, list[TrainingSample]], dataset_id: Optional[str]) -> dict[str, list[TrainingSample]]:
    """Take the held-out dataset out of ``samples`` (what the sampler batches); returns it by id."""
    if dataset_id is None:
        return {}
    held = samples.pop(dataset_id)
    if not held:
        raise DataError(
            f"dataset {dataset_id!r} (--eval_dataset_id) has no usable images to evaluate on; add images to it "
            "(see its skip reasons above) or name another dataset"
        )
    return {dataset_id: held}


def held_out_note(held_out: dict[str, list[TrainingSample]], count: int) -> list[Note]:
    """The start-up summary's line on the held-out dataset."""
    return [Note(logging.INFO, f"dataset {dataset_id!r}: {len(samples)} image(s) held out for the evaluation loss "
                               f"(--eval_dataset_id), {min(count, len(samples))} evaluated (--num_eval_images); "
                               "never trained on")
            for dataset_id, samples in held_out.items()]


def eval_images(samples: Sequence[TrainingSample], count: int) -> list[TrainingSample]:
    """The first ``count`` samples by path: the same images in every run and every evaluation."""
    return sorted(samples, key=lambda s: s.record.relative_path)[:count]
