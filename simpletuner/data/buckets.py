"""Aspect buckets and crop geometry: where each image goes and what happens to its pixels.

Everything here is pure integer arithmetic on sizes, so the plan for a
dataset of any size is computed without opening an image, and the same plan
drives the latent cache, the sampler's buckets and SDXL's micro-conditioning
(``original_size``, ``crop_top_left``, ``target_size``).

Rules (R = ``aspect_bucket_alignment``; ``round`` means half-up):

* Bucket, ``resolution_type = pixel_area``: the image's aspect a = w/h is
  kept at an area of resolution²: bucket width = round(sqrt(res²·a)/R)·R,
  height = round(sqrt(res²/a)/R)·R, each at least R.  1024 gives 1024x1024,
  1216x832, 832x1216, as SimpleTuner does.
* Bucket, ``resolution_type = pixel``: the shorter edge is ``resolution``,
  the longer is round(resolution·(long/short)/R)·R.
* ``crop = false`` or ``crop_aspect = preserve``: the image is resized
  (aspect kept) to the smallest size covering the bucket: scale =
  max(bw/w, bh/h), the scaled edges rounded up; the excess (at most a few
  pixels from rounding to R) is cut.  With ``crop = false`` the cut is centred;
  with crop it is placed by ``crop_style``.
* ``crop = true`` with ``crop_aspect = square``: the bucket is
  resolution x resolution; the image is resized so its shorter edge is
  ``resolution`` and the window is placed by ``crop_style``.
* A ``resolution`` that is not a multiple of R is first rounded to one, so
  that every bucket edge is a multiple of R (VAEs and patch sizes need it).
* ``crop_style``: ``center`` centres the window, ``corner`` takes the
  lowest-right corner, ``random`` picks an offset from a generator seeded by
  (seed, dataset id, relative path), so it is the same every run and epoch.
* ``minimum_image_size`` m: ``pixel`` skips images whose shorter edge < m;
  ``pixel_area`` skips images with w·h < m² (sqrt of the area below m).
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.schema import DatasetConfig

REASON_TOO_SMALL = "below minimum_image_size"


def _round_to(value: float, multiple: int) -> int:
    """``value`` rounded half-up to a multiple of ``multiple``, never below ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def aligned_resolution(dataset: DatasetConfig) -> int:
    """``resolution`` rounded to a multiple of R (a no-op for the usual 512, 1024...)."""
    return _round_to(dataset.resolution, dataset.aspect_bucket_alignment)


def bucket_for(width: int, height: int, dataset: DatasetConfig) -> Tuple[int, int]:
    """The (width, height) bucket of an upright ``width`` x ``height`` image."""
    rounding = dataset.aspect_bucket_alignment
    resolution = aligned_resolution(dataset)
    if dataset.crop and dataset.crop_aspect == "square":
        return resolution, resolution
    if dataset.resolution_type == "pixel_area":
        area = float(resolution * resolution)
        aspect = width / height
        return _round_to(math.sqrt(area * aspect), rounding), _round_to(math.sqrt(area / aspect), rounding)
    if dataset.resolution_type == "pixel":
        if width == height:
            return resolution, resolution
        if width > height:
            return _round_to(resolution * width / height, rounding), resolution
        return resolution, _round_to(resolution * height / width, rounding)
    raise ValueError(f"resolution_type {dataset.resolution_type!r} is not implemented")


def is_too_small(width: int, height: int, dataset: DatasetConfig) -> bool:
    """Whether the image falls below ``minimum_image_size`` (see the module rules)."""
    minimum = dataset.minimum_image_size
    if not minimum:
        return False
    if dataset.resolution_type == "pixel":
        return min(width, height) < minimum
    return width * height < minimum * minimum


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cover_size(width: int, height: int, bucket_w: int, bucket_h: int) -> Tuple[int, int]:
    """Smallest (w, h) with the image's aspect that covers the bucket; exact integer math."""
    if bucket_w * height >= bucket_h * width:  # width is the binding edge
        return bucket_w, max(bucket_h, _ceil_div(height * bucket_w, width))
    return max(bucket_w, _ceil_div(width * bucket_h, height)), bucket_h


def shorter_edge_size(width: int, height: int, edge: int) -> Tuple[int, int]:
    """(w, h) with the shorter edge equal to ``edge``, aspect kept, longer edge rounded up."""
    if width <= height:
        return edge, max(edge, _ceil_div(height * edge, width))
    return max(edge, _ceil_div(width * edge, height)), edge


def crop_offset(
    free_h: int, free_w: int, style: str, rng_seed: int, dataset_id: str, relative_path: str
) -> Tuple[int, int]:
    """(top, left) of the crop window given the slack ``free_h`` x ``free_w``."""
    if style == "center":
        return free_h // 2, free_w // 2
    if style == "corner":
        return free_h, free_w
    if style == "random":
        rng = random.Random(f"{rng_seed}|{dataset_id}|{relative_path}")
        return rng.randint(0, free_h), rng.randint(0, free_w)
    raise ValueError(f"crop_style {style!r} is not implemented")


def plan_sample(record: ImageRecord, dataset: DatasetConfig, rng_seed: int) -> Optional[TrainingSample]:
    """The geometry ``record`` is trained at, or None when it is below minimum_image_size."""
    width, height = record.width, record.height
    if is_too_small(width, height, dataset):
        return None
    bucket_w, bucket_h = bucket_for(width, height, dataset)
    if dataset.crop and dataset.crop_aspect == "square":
        inter_w, inter_h = shorter_edge_size(width, height, bucket_w)
    else:
        inter_w, inter_h = cover_size(width, height, bucket_w, bucket_h)
    style = dataset.crop_style if dataset.crop else "center"
    top, left = crop_offset(
        inter_h - bucket_h, inter_w - bucket_w, style, rng_seed, dataset.id, record.relative_path
    )
    return TrainingSample(
        dataset_id=dataset.id,
        record=record,
        original_size=(height, width),
        intermediate_size=(inter_h, inter_w),
        crop_top_left=(top, left),
        target_size=(bucket_h, bucket_w),
    )


def plan_dataset(
    records: Sequence[ImageRecord], dataset: DatasetConfig, rng_seed: int
) -> Tuple[List[TrainingSample], Dict[str, List[str]]]:
    """Plan every record; returns the samples and skipped relative paths by reason."""
    samples: List[TrainingSample] = []
    skipped: Dict[str, List[str]] = {}
    for record in records:
        sample = plan_sample(record, dataset, rng_seed)
        if sample is None:
            skipped.setdefault(REASON_TOO_SMALL, []).append(record.relative_path)
        else:
            samples.append(sample)
    return samples, skipped
