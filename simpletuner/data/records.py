"""Typed records handed from one data stage to the next.

discover -> :class:`ImageRecord` -> bucketing/cropping -> :class:`TrainingSample`
-> latent cache -> sampler -> collate.  Sizes follow SDXL's convention of
``(height, width)`` tuples; bucket keys are ``(width, height)`` because that
is how users read resolutions ("1216x832").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Tuple

Size = Tuple[int, int]  # (height, width)


class ImageRecord:
    """One usable image found by discovery.

    ``width``/``height`` are after EXIF orientation is applied, i.e. the size
    a person sees.  ``size_bytes`` and ``mtime_ns`` identify the file version
    so that caches keyed on them notice edits.

    A million of these stay alive for a whole run, so a record does not keep
    its own absolute path: discovery makes records with :meth:`under`, which
    keep the dataset's root (one string shared by every record of the
    dataset) and the relative path, and ``path`` joins them when asked (a
    read, a face detection: rare next to the record's lifetime).  Records
    are immutable; equality and hashing cover every field but ``storage``.
    """

    __slots__ = ("_base", "_tail", "relative_path", "width", "height", "size_bytes", "mtime_ns", "caption",
                 "storage")

    def __init__(self, path: str, relative_path: str, width: int, height: int, size_bytes: int, mtime_ns: int,
                 caption: str, storage: Any = None) -> None:
        _fill(self, path, "", relative_path, width, height, size_bytes, mtime_ns, caption, storage)

    @classmethod
    def under(cls, base: str, relative_path: str, width: int, height: int, size_bytes: int, mtime_ns: int,
              caption: str, storage: Any = None) -> "ImageRecord":
        """The record of ``base + relative_path``; pass one ``base`` string for a whole dataset.

        ``base`` ends with the separator (``"/data/set/"``, or an object key prefix such as
        ``"photos/"``), so ``path`` is a plain concatenation.
        """
        record = cls.__new__(cls)
        _fill(record, base, relative_path, relative_path, width, height, size_bytes, mtime_ns, caption, storage)
        return record

    @property
    def path(self) -> str:
        """Absolute path (or object key for remote backends)."""
        tail = self._tail
        if not tail:
            return self._base
        if _SEP == "/" or self.storage is not None:  # object keys keep "/" everywhere
            return self._base + tail
        return self._base + tail.replace("/", _SEP)

    def _identity(self) -> tuple:
        return (self.path, self.relative_path, self.width, self.height, self.size_bytes, self.mtime_ns, self.caption)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._identity() == other._identity()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return (f"ImageRecord(path={self.path!r}, relative_path={self.relative_path!r}, width={self.width!r}, "
                f"height={self.height!r}, size_bytes={self.size_bytes!r}, mtime_ns={self.mtime_ns!r}, "
                f"caption={self.caption!r})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ImageRecord is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ImageRecord is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple:
        # The shared base is pickled with each record; fine for the few that cross processes.
        return (_rebuild, (self._base, self._tail, self.relative_path, self.width, self.height, self.size_bytes,
                           self.mtime_ns, self.caption, self.storage))


_SEP = os.sep
_SETTERS = tuple(getattr(ImageRecord, name).__set__ for name in ImageRecord.__slots__)


def _fill(record: ImageRecord, *values: Any) -> None:
    # Slot descriptors write past the __setattr__ that keeps records immutable.
    for setter, value in zip(_SETTERS, values):
        setter(record, value)


def _rebuild(*values: Any) -> ImageRecord:
    record = ImageRecord.__new__(ImageRecord)
    _fill(record, *values)
    return record


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
