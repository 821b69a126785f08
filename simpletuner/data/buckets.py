"""Aspect buckets and crop geometry: where each image goes and what happens to its pixels.

Everything here is pure integer arithmetic on sizes, so the plan for a
dataset of any size is computed without opening an image, and the same plan
drives the latent cache, the sampler's buckets and SDXL's micro-conditioning
(``original_size``, ``crop_top_left``, ``target_size``).

Rules (R = ``aspect_bucket_alignment``; ``round`` means half-up; a = the
aspect ratio width / height that decides the bucket):

* a is the image's own aspect, except with ``crop = true`` and
  ``crop_aspect`` = ``square`` (a = 1), ``closest`` (the ``crop_aspect_buckets``
  ratio nearest the image's, measured as |log(r / a)|) or ``random`` (one of
  the ratios that keeps at least half of the image, i.e. min(r, a) / max(r, a)
  >= 0.5, chosen per image from (dataset id, path, image size); square
  when none does).  ``--aspect_bucket_rounding`` n rounds a to n decimals first.
* Bucket, ``resolution_type = pixel_area``: area resolution² at aspect a:
  width = round(sqrt(res²·a)/R)·R, height = round(sqrt(res²/a)/R)·R, each at
  least R.  1024 gives 1024x1024, 1216x832, 832x1216, as SimpleTuner does.
* Bucket, ``resolution_type = pixel``: the shorter edge is ``resolution``,
  the longer is round(resolution·(long/short)/R)·R.
* Resize: ``crop = true`` with square crops resizes the image so its shorter
  edge is ``resolution``; everything else resizes it (aspect kept) to the
  smallest size covering the bucket: scale = max(bw/w, bh/h), the scaled
  edges rounded up.  With crop, an image above ``maximum_image_size`` is
  instead downsampled to ``target_downsample_size`` (both in the unit of
  ``minimum_image_size``) when that still covers the bucket, so the crop
  window holds a smaller part of it than usual (SimpleTuner's
  downsample-before-crop).
* The excess is cut: centred with ``crop = false``; with crop, placed by
  ``crop_style``: ``center``, ``corner`` (lowest-right), ``random`` (an offset
  drawn from (dataset id, path, resize and bucket), the same every run and
  epoch whatever ``--seed`` is, so cached latents stay valid; see
  ``training/epoch_latents.py`` for fresh crops each epoch) or ``face``
  (centred on the largest detected face as far as the image allows; centre
  when no face is found).
* ``aspect_resolution_map``: an aspect (after the rounding above) listed in
  the dataset's map, to two decimals, takes the map's (width, height)
  instead of the computed bucket; square crops are not affected.
* A ``resolution`` that is not a multiple of R is first rounded to one, so
  that every bucket edge is a multiple of R (VAEs and patch sizes need it).
* Filters: ``minimum_image_size`` m skips images whose shorter edge (``pixel``)
  or sqrt(w·h) (``pixel_area``) is below m; ``minimum_aspect_ratio`` and
  ``maximum_aspect_ratio`` bound w/h.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from simpletuner.data.bulk import collector_paused
from simpletuner.data.aspect_map import mapped_bucket
from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.schema import DatasetConfig

REASON_TOO_SMALL = "below minimum_image_size"
REASON_TOO_NARROW = "aspect below minimum_aspect_ratio"
REASON_TOO_WIDE = "aspect above maximum_aspect_ratio"

Focus = Tuple[float, float]  # (x, y) of a point of interest, as fractions of the upright image


def _round_to(value: float, multiple: int) -> int:
    """``value`` rounded half-up to a multiple of ``multiple``, never below ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def aligned_resolution(dataset: DatasetConfig) -> int:
    """``resolution`` rounded to a multiple of R (a no-op for the usual 512, 1024...)."""
    return _round_to(dataset.resolution, dataset.aspect_bucket_alignment)


def _square_crop(dataset: DatasetConfig) -> bool:
    return dataset.crop and dataset.crop_aspect == "square"


def _rng(rng_seed: int, dataset_id: str, relative_path: str, purpose: str = "") -> random.Random:
    # Bytes, not str: a file name that is not valid UTF-8 holds surrogate escapes.
    key = f"{rng_seed}|{dataset_id}|{relative_path}{purpose}".encode("utf-8", "surrogateescape")
    return random.Random(key)


def geometry_seed(*sizes: Tuple[int, int]) -> int:
    """A seed fixed by an image's geometry, for draws that must repeat on every run.

    The planned random crop and random crop aspect depend on this, the
    dataset id and the path, never on the run's ``--seed``: a run without a
    seed then finds the latents the last run cached instead of encoding new
    crops (and leaving the old ones behind) every time.
    """
    text = "|".join(f"{a}x{b}" for a, b in sizes)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def crop_aspect_for(
    width: int, height: int, dataset: DatasetConfig, relative_path: str = ""
) -> Optional[float]:
    """The ratio a crop_aspect of closest/random picks for this image; None for other settings."""
    if not dataset.crop or dataset.crop_aspect not in ("closest", "random") or not dataset.crop_aspect_buckets:
        return None
    aspect = width / height
    ratios = dataset.crop_aspect_buckets
    if dataset.crop_aspect == "closest":
        return min(ratios, key=lambda r: (abs(math.log(r / aspect)), r))
    keeps_half = [r for r in ratios if min(r, aspect) / max(r, aspect) >= 0.5]
    if not keeps_half:
        return 1.0
    return _rng(geometry_seed((width, height)), dataset.id, relative_path, "|aspect").choice(keeps_half)


def bucket_for(
    width: int, height: int, dataset: DatasetConfig, relative_path: str = ""
) -> Tuple[int, int]:
    """The (width, height) bucket of an upright ``width`` x ``height`` image."""
    rounding = dataset.aspect_bucket_alignment
    resolution = aligned_resolution(dataset)
    if _square_crop(dataset):
        return resolution, resolution
    chosen = crop_aspect_for(width, height, dataset, relative_path)
    num, den = (chosen, 1.0) if chosen is not None else (width, height)
    if dataset.aspect_bucket_rounding is not None:
        num, den = round(num / den, dataset.aspect_bucket_rounding), 1.0
    mapped = mapped_bucket(dataset.aspect_resolution_map, num / den) if dataset.aspect_resolution_map else None
    if mapped is not None:
        return mapped
    if dataset.resolution_type == "pixel_area":
        area = float(resolution * resolution)
        aspect = num / den
        return _round_to(math.sqrt(area * aspect), rounding), _round_to(math.sqrt(area / aspect), rounding)
    if dataset.resolution_type == "pixel":
        if num == den:
            return resolution, resolution
        if num > den:
            return _round_to(resolution * num / den, rounding), resolution
        return resolution, _round_to(resolution * den / num, rounding)
    raise ValueError(f"resolution_type {dataset.resolution_type!r} is not implemented")


def size_measure(width: int, height: int, dataset: DatasetConfig) -> float:
    """What minimum/maximum_image_size compare against: shorter edge, or sqrt(area)."""
    if dataset.resolution_type == "pixel":
        return float(min(width, height))
    return math.sqrt(width * height)


def is_too_small(width: int, height: int, dataset: DatasetConfig) -> bool:
    """Whether the image falls below ``minimum_image_size`` (see the module rules)."""
    minimum = dataset.minimum_image_size
    if not minimum:
        return False
    if dataset.resolution_type == "pixel":
        return min(width, height) < minimum
    return width * height < minimum * minimum


def skip_reason(width: int, height: int, dataset: DatasetConfig) -> Optional[str]:
    """Why the image is left out of training, or None when it is used."""
    if is_too_small(width, height, dataset):
        return REASON_TOO_SMALL
    aspect = width / height
    if dataset.minimum_aspect_ratio is not None and aspect < dataset.minimum_aspect_ratio:
        return REASON_TOO_NARROW
    if dataset.maximum_aspect_ratio is not None and aspect > dataset.maximum_aspect_ratio:
        return REASON_TOO_WIDE
    return None


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


def downsampled_size(width: int, height: int, dataset: DatasetConfig) -> Optional[Tuple[int, int]]:
    """(w, h) of the downsample-before-crop step, or None when it does not apply to this image."""
    maximum, target = dataset.maximum_image_size, dataset.target_downsample_size
    if not dataset.crop or not maximum or not target:
        return None
    measure = size_measure(width, height, dataset)
    if measure <= maximum:
        return None
    scale = target / measure
    return max(1, round(width * scale)), max(1, round(height * scale))


def crop_offset(
    free_h: int, free_w: int, style: str, rng_seed: int, dataset_id: str, relative_path: str,
    window: Tuple[int, int] = (0, 0), intermediate: Tuple[int, int] = (0, 0), focus: Optional[Focus] = None,
) -> Tuple[int, int]:
    """(top, left) of the crop window given the slack ``free_h`` x ``free_w``.

    ``face`` needs the window (h, w), the intermediate size (h, w) and the
    ``focus`` point; without a focus it centres.
    """
    if style == "center" or (style == "face" and focus is None):
        return free_h // 2, free_w // 2
    if style == "corner":
        return free_h, free_w
    if style == "random":
        rng = _rng(rng_seed, dataset_id, relative_path)
        return rng.randint(0, free_h), rng.randint(0, free_w)
    if style == "face":
        (window_h, window_w), (inter_h, inter_w) = window, intermediate
        top = round(focus[1] * inter_h - window_h / 2)
        left = round(focus[0] * inter_w - window_w / 2)
        return min(max(top, 0), free_h), min(max(left, 0), free_w)
    raise ValueError(f"crop_style {style!r} is not implemented")


def plan_sample(
    record: ImageRecord, dataset: DatasetConfig, focus: Optional[Focus] = None
) -> Optional[TrainingSample]:
    """The geometry ``record`` is trained at, or None when a size or aspect filter leaves it out.

    ``focus`` is the detected face for ``crop_style: face`` (see faces.py).
    """
    width, height = record.width, record.height
    if skip_reason(width, height, dataset) is not None:
        return None
    bucket_w, bucket_h = bucket_for(width, height, dataset, record.relative_path)
    if _square_crop(dataset):
        inter_w, inter_h = shorter_edge_size(width, height, bucket_w)
    else:
        inter_w, inter_h = cover_size(width, height, bucket_w, bucket_h)
    smaller = downsampled_size(width, height, dataset)
    if smaller is not None and smaller[0] >= bucket_w and smaller[1] >= bucket_h:
        inter_w, inter_h = smaller
    style = dataset.crop_style if dataset.crop else "center"
    top, left = crop_offset(
        inter_h - bucket_h, inter_w - bucket_w, style,
        geometry_seed((width, height), (inter_w, inter_h), (bucket_w, bucket_h)), dataset.id, record.relative_path,
        window=(bucket_h, bucket_w), intermediate=(inter_h, inter_w), focus=focus,
    )
    return TrainingSample(
        dataset_id=dataset.id,
        record=record,
        original_size=(height, width),
        intermediate_size=(inter_h, inter_w),
        crop_top_left=(top, left),
        target_size=(bucket_h, bucket_w),
        is_regularisation=dataset.is_regularisation_data,
    )


def plan_dataset(
    records: Sequence[ImageRecord],
    dataset: DatasetConfig,
    focus: Optional[Mapping[str, Optional[Focus]]] = None,
) -> Tuple[List[TrainingSample], Dict[str, List[str]]]:
    """Plan every record; returns the samples and skipped relative paths by reason."""
    with collector_paused():
        return _plan_all(records, dataset, focus)


def _plan_all(
    records: Sequence[ImageRecord], dataset: DatasetConfig, focus: Optional[Mapping[str, Optional[Focus]]]
) -> Tuple[List[TrainingSample], Dict[str, List[str]]]:
    samples: List[TrainingSample] = []
    skipped: Dict[str, List[str]] = {}
    focus = focus or {}
    for record in records:
        reason = skip_reason(record.width, record.height, dataset)
        if reason is not None:
            skipped.setdefault(reason, []).append(record.relative_path)
            continue
        sample = plan_sample(record, dataset, focus.get(record.relative_path))
        samples.append(sample)
    return samples, skipped
