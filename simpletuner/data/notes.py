"""Start-up notes on what a dataset's plan does that its config does not say.

Each function looks at one dataset and returns a :class:`Note` (or None)
for the start-up summary:

- :func:`rounding_note`: ``resolution`` is not a multiple of
  ``aspect_bucket_alignment``, so images train at another size than asked
  (96 with alignment 64 trains at 128; a square crop of 80 at 64);
- :func:`upscale_note`: how many images are enlarged to fill their bucket,
  and by how much at most (small images at a large resolution train blurry);
- :func:`unused_caption_files_note`: ``.txt`` captions sit beside the
  images while ``caption_strategy`` takes captions from elsewhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from simpletuner.data.buckets import aligned_resolution
from simpletuner.data.discovery import shown
from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.schema import DatasetConfig

# Enlarging by this much or more visibly softens detail: such a note is a warning.
_UPSCALE_WARNING = 2.0


@dataclass(frozen=True)
class Note:
    level: int  # logging level
    text: str


def dataset_notes(dataset: DatasetConfig, samples: Sequence[TrainingSample],
                  records: Sequence[ImageRecord]) -> List[Note]:
    """Every note for one dataset, in the order the summary prints them."""
    notes = [rounding_note(dataset), upscale_note(dataset, samples), unused_caption_files_note(dataset, records)]
    return [note for note in notes if note is not None]


def rounding_note(dataset: DatasetConfig) -> Optional[Note]:
    """Said once per dataset when the trained size is not the ``resolution`` asked for."""
    asked, used = dataset.resolution, aligned_resolution(dataset)
    if asked == used:
        return None
    alignment = dataset.aspect_bucket_alignment
    shape = (f"{used}x{used} square crops" if dataset.crop and dataset.crop_aspect == "square"
             else f"a shorter edge of {used}" if dataset.resolution_type == "pixel"
             else f"about {used}x{used} pixels per image")
    return Note(logging.WARNING, (
        f"dataset {dataset.id!r}: resolution {asked:g} is not a multiple of aspect_bucket_alignment {alignment}, "
        f"so it trains at {used} ({shape}); set resolution to a multiple of {alignment}, or an "
        f"aspect_bucket_alignment that divides {asked:g}, to train at the size you asked for"
    ))


def upscale_factor(sample: TrainingSample) -> float:
    """How much the image is enlarged before cropping (1.0: not at all; below 1: shrunk)."""
    (orig_h, orig_w), (inter_h, inter_w) = sample.original_size, sample.intermediate_size
    return max(inter_h / orig_h, inter_w / orig_w)


def upscale_note(dataset: DatasetConfig, samples: Sequence[TrainingSample]) -> Optional[Note]:
    """"12 of 36 images upscaled, up to 4.2x", with the most enlarged image as the example."""
    enlarged = [(upscale_factor(s), s) for s in samples if upscale_factor(s) > 1.0]
    if not enlarged:
        return None
    factor, worst = max(enlarged, key=lambda item: (item[0], item[1].record.relative_path))
    (orig_h, orig_w), (inter_h, inter_w) = worst.original_size, worst.intermediate_size
    text = (
        f"dataset {dataset.id!r}: {len(enlarged)} of {len(samples)} images upscaled to fill their bucket, "
        f"up to {factor:.1f}x ({shown(worst.record.relative_path)}: {orig_w}x{orig_h} -> {inter_w}x{inter_h})"
    )
    if factor < _UPSCALE_WARNING:
        return Note(logging.INFO, text)
    return Note(logging.WARNING, text + "; lower resolution, or set minimum_image_size to leave small images out")


def unused_caption_files_note(dataset: DatasetConfig, records: Sequence[ImageRecord]) -> Optional[Note]:
    """Caption files beside local images that the dataset's caption_strategy does not read."""
    if dataset.caption_strategy == "textfile" or (dataset.only_instance_prompt and dataset.instance_prompt):
        return None
    # Local files only: in a bucket this would cost a request per image.
    with_file = [r for r in records if r.storage is None and os.path.isfile(os.path.splitext(r.path)[0] + ".txt")]
    if not with_file:
        return None
    example = with_file[0]
    return Note(logging.WARNING, (
        f"dataset {dataset.id!r}: {len(with_file)} of {len(records)} images have a .txt caption file beside "
        f"them that is not used: caption_strategy is {dataset.caption_strategy} (e.g. "
        f"{shown(example.relative_path)} is captioned {example.caption!r}); set caption_strategy textfile "
        "to train on the caption files"
    ))
