"""Typed records handed from one data stage to the next.

discover -> :class:`ImageRecord` -> bucketing/cropping -> :class:`TrainingSample`
-> latent cache -> sampler -> collate.  Sizes follow SDXL's convention of
``(height, width)`` tuples; bucket keys are ``(width, height)`` because that
is how users read resolutions ("1216x832").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Tuple

Size = Tuple[int, int]  # (height, width)


@dataclass(frozen=True, slots=True)  # slots: a million records hold no per-record __dict__
class ImageRecord:
    """One usable image found by discovery.

    ``width``/``height`` are after EXIF orientation is applied, i.e. the size
    a person sees.  ``size_bytes`` and ``mtime_ns`` identify the file version
    so that caches keyed on them notice edits.
    """

    path: str  # absolute path (or object key for remote backends)
    relative_path: str  # path inside the dataset, used in reports and cache keys
    width: int
    height: int
    size_bytes: int
    mtime_ns: int
    caption: str
    # Where ``path`` is read from when it is not a local file (an S3 bucket's Storage); not part of
    # the record's identity.
    storage: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TrainingSample:
    """An image with the exact geometry it is trained at.

    The image is resized to ``intermediate_size`` and then cropped at
    ``crop_top_left`` to ``target_size``.  SDXL's micro-conditioning
    (``original_size``, ``crop_top_left``, ``target_size``) is read from here,
    so it always describes what really happened to the pixels.
    """

    dataset_id: str
    record: ImageRecord
    original_size: Size  # (h, w) of the source image
    intermediate_size: Size  # (h, w) after resizing, before cropping
    crop_top_left: Tuple[int, int]  # (top, left) in intermediate pixels
    target_size: Size  # (h, w) fed to the VAE; equals the bucket
    is_regularisation: bool = False  # from the dataset's is_regularisation_data

    @property
    def bucket(self) -> Tuple[int, int]:
        """Bucket key as (width, height)."""
        return (self.target_size[1], self.target_size[0])

    @property
    def caption(self) -> str:
        return self.record.caption
