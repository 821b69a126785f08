"""Typed records handed from one data stage to the next.

discover -> :class:`ImageRecord` -> bucketing/cropping -> :class:`TrainingSample`
-> latent cache -> sampler -> collate.  Sizes follow SDXL's convention of
``(height, width)`` tuples; bucket keys are ``(width, height)`` because that
is how users read resolutions ("1216x832").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Tuple, Union

Size = Tuple[int, int]  # (height, width)


class RecordOrigin:
    """Where a dataset's records are: the part of every path before the relative path, and the storage.

    One per dataset, shared by all its records.  ``base`` ends with the
    separator (``"/data/set/"``) or is an object key prefix (``"photos/"``);
    ``storage`` is the bucket (or Hugging Face rows) the paths are read from,
    None for local files.  ``whole`` marks an origin whose ``base`` is a
    record's complete path (a record built from a path that does not end with
    its relative path).
    """

    __slots__ = ("base", "storage", "whole")

    def __init__(self, base: str, storage: Any = None, whole: bool = False) -> None:
        self.base, self.storage, self.whole = base, storage, whole

    def path(self, relative_path: str) -> str:
        if self.whole:
            return self.base
        if _SEP == "/" or self.storage is not None:  # object keys keep "/" everywhere
            return self.base + relative_path
        return self.base + relative_path.replace("/", _SEP)


class ImageRecord:
    """One usable image found by discovery.

    ``width``/``height`` are after EXIF orientation is applied, i.e. the size
    a person sees.  ``size_bytes`` and ``mtime_ns`` identify the file version
    so that caches keyed on them notice edits.

    A million of these stay alive for a whole run, so a record does not keep
    its own absolute path or storage: discovery makes records with
    :meth:`under`, which share the dataset's :class:`RecordOrigin` and keep
    the relative path, and ``path`` joins them when asked (a read, a face
    detection: rare next to the record's lifetime).  Records are immutable;
    equality and hashing cover every field but ``storage``.
    """

    # ``_version`` packs size and mtime into one int object: a million records each save an int (32 B).
    __slots__ = ("_origin", "relative_path", "width", "height", "_version", "caption")

    def __init__(self, path: str, relative_path: str, width: int, height: int, size_bytes: int, mtime_ns: int,
                 caption: str, storage: Any = None) -> None:
        origin = RecordOrigin(path, storage, whole=True)
        _fill(self, origin, relative_path, width, height, _pack(size_bytes, mtime_ns), caption)

    @classmethod
    def under(cls, origin: RecordOrigin, relative_path: str, width: int, height: int, size_bytes: int,
              mtime_ns: int, caption: str) -> "ImageRecord":
        """The record of ``relative_path`` in ``origin``; pass one origin for a whole dataset."""
        record = cls.__new__(cls)
        _fill(record, origin, relative_path, width, height, _pack(size_bytes, mtime_ns), caption)
        return record

    @property
    def size_bytes(self) -> int:
        version = self._version
        return version[0] if type(version) is tuple else version >> 64

    @property
    def mtime_ns(self) -> int:
        version = self._version
        if type(version) is tuple:
            return version[1]
        mtime = version & _LOW64
        return mtime - (1 << 64) if mtime >> 63 else mtime  # mtimes before 1970 are negative

    @property
    def path(self) -> str:
        """Absolute path (or object key for remote backends)."""
        return self._origin.path(self.relative_path)

    @property
    def storage(self) -> Any:
        """Where ``path`` is read from when it is not a local file (an S3 bucket's Storage); not part of
        the record's identity."""
        return self._origin.storage

    def replace(self, **changes: Any) -> "ImageRecord":
        """A copy with some fields changed, as ``dataclasses.replace`` gives for a dataclass."""
        fields = {"path": self.path, "relative_path": self.relative_path, "width": self.width,
                  "height": self.height, "size_bytes": self.size_bytes, "mtime_ns": self.mtime_ns,
                  "caption": self.caption, "storage": self.storage}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"ImageRecord has no field {sorted(unknown)[0]!r}")
        fields.update(changes)
        return ImageRecord(**fields)

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
        return (ImageRecord, (self.path, self.relative_path, self.width, self.height, self.size_bytes,
                              self.mtime_ns, self.caption, self.storage))


_SEP = os.sep
_LOW64 = (1 << 64) - 1


_SET_ORIGIN, _SET_RELATIVE, _SET_WIDTH, _SET_HEIGHT, _SET_VERSION, _SET_CAPTION = (
    getattr(ImageRecord, name).__set__ for name in ImageRecord.__slots__)


def _fill(record: ImageRecord, origin: RecordOrigin, relative_path: str, width: int, height: int, version: int,
          caption: str) -> None:
    # Slot descriptors write past the __setattr__ that keeps records immutable.
    _SET_ORIGIN(record, origin)
    _SET_RELATIVE(record, relative_path)
    _SET_WIDTH(record, width)
    _SET_HEIGHT(record, height)
    _SET_VERSION(record, version)
    _SET_CAPTION(record, caption)


def _pack(size_bytes: int, mtime_ns: int) -> Union[int, Tuple[int, int]]:
    if -(1 << 63) <= mtime_ns < (1 << 63):
        return (size_bytes << 64) | (mtime_ns & _LOW64)
    return (size_bytes, mtime_ns)  # a timestamp past 2262 or before 1677 (a damaged file system's): kept exact


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
