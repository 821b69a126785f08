"""``--delete_problematic_images`` and ``--delete_unwanted_images``, without deleting anything.

SimpleTuner deletes such images from the dataset.  We never destroy a user's
data, so the images are *moved* instead, into a quarantine beside the dataset:

* a local folder ``photos/`` gets ``photos.rejected/`` next to it, holding each
  image under its relative path (``photos.rejected/sub/a.jpg``);
* an S3 dataset's objects move under the bucket's ``rejected/`` prefix, keeping
  their keys (``rejected/photos/sub/a.jpg``); discovery never lists that prefix.

A file already in the quarantine is never overwritten: the newcomer gets a
numbered name.  What moved is listed in the run summary with how to put it back.

Problematic images are those discovery or caching could not read (empty, not an
image, corrupt, too large to decode safely, undecodable); unwanted ones are
those left out for their size or aspect ratio.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from simpletuner.data.buckets import REASON_TOO_NARROW, REASON_TOO_SMALL, REASON_TOO_WIDE
from simpletuner.data.discovery import REASON_EMPTY, REASON_UNDECODABLE, shown
from simpletuner.data.headers import REASON_CORRUPT, REASON_NOT_IMAGE, REASON_TOO_LARGE
from simpletuner.data.schema import DatasetConfig
from simpletuner.storage.datasets import QUARANTINE_PREFIX, data_prefix, images_of

logger = logging.getLogger(__name__)

PROBLEMATIC = (REASON_EMPTY, REASON_NOT_IMAGE, REASON_CORRUPT, REASON_TOO_LARGE, REASON_UNDECODABLE)
UNWANTED = (REASON_TOO_SMALL, REASON_TOO_NARROW, REASON_TOO_WIDE)
_SHOWN = 10  # file names listed in the summary; the count covers the rest


@dataclass(frozen=True)
class QuarantinePolicy:
    """Which skip reasons send an image to the quarantine (empty: none)."""

    reasons: frozenset = frozenset()

    @classmethod
    def from_config(cls, config: object) -> "QuarantinePolicy":
        reasons = set()
        if getattr(config, "delete_problematic_images", False):
            reasons.update(PROBLEMATIC)
        if getattr(config, "delete_unwanted_images", False):
            reasons.update(UNWANTED)
        return cls(frozenset(reasons))

    def chosen(self, skipped: Mapping[str, Iterable[str]]) -> list[str]:
        """The relative paths among ``skipped`` (reason -> paths) that this policy moves."""
        return sorted({path for reason, paths in skipped.items() if reason in self.reasons for path in paths})


@dataclass(frozen=True)
class Quarantined:
    """Images of one dataset moved to its quarantine."""

    dataset_id: str
    source: str  # the dataset's folder or s3:// location
    folder: str  # where they went
    moved: tuple[str, ...]  # relative paths, as they were in the dataset

    def summary(self) -> str:
        names = ", ".join(shown(p) for p in self.moved[:_SHOWN])
        more = f", and {len(self.moved) - _SHOWN} more" if len(self.moved) > _SHOWN else ""
        return (f"dataset {self.dataset_id!r}: moved {len(self.moved)} rejected image(s) to {self.folder} "
                f"({names}{more}); nothing was deleted. To restore them, move them back into {self.source} "
                "under the same relative paths and run without --delete_problematic_images/"
                "--delete_unwanted_images")


def quarantine_location(dataset: DatasetConfig) -> str:
    """The folder (or s3:// prefix) a dataset's rejected images move to."""
    images = images_of(dataset)
    if images is not None:
        return images.location(QUARANTINE_PREFIX + data_prefix(dataset))
    return os.path.normpath(dataset.instance_data_dir) + ".rejected"


def move_to_quarantine(dataset: DatasetConfig, relative_paths: Iterable[str]) -> Optional[Quarantined]:
    """Move these images of ``dataset`` into its quarantine; None when there were none to move.

    An image that cannot be moved (gone already, no permission) stays where it
    is with a warning: it is left out of training either way.
    """
    if dataset.huggingface is not None:  # rows of a Hugging Face dataset are never moved: skipping them is all
        return None
    moved = []
    for relative in sorted(set(relative_paths)):
        try:
            _move_one(dataset, relative)
        except OSError as error:
            logger.warning("dataset %r: could not move %s to %s (%s); it stays in place, left out of training",
                           dataset.id, shown(relative), quarantine_location(dataset), error)
            continue
        moved.append(relative)
    if not moved:
        return None
    source = str(images_of(dataset).location(data_prefix(dataset))) if dataset.s3 else dataset.instance_data_dir
    return Quarantined(dataset.id, source, str(quarantine_location(dataset)), tuple(moved))


def _move_one(dataset: DatasetConfig, relative: str) -> None:
    images = images_of(dataset)
    if images is not None:
        key = data_prefix(dataset) + relative
        target = _free_name(images.exists, QUARANTINE_PREFIX + key)
        images.write(target, images.read(key))  # copied first: the original goes only once the copy exists
        images.delete(key)
        return
    source = os.path.join(dataset.instance_data_dir, *relative.split("/"))
    if not os.path.isfile(source):
        raise FileNotFoundError("no such file")
    target = _free_name(os.path.lexists, os.path.join(quarantine_location(dataset), *relative.split("/")))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)


def _free_name(taken, path: str) -> str:
    """``path``, or ``name.1.ext``, ``name.2.ext``... when something is already there."""
    if not taken(path):
        return path
    stem, extension = os.path.splitext(path)
    number = 1
    while taken(f"{stem}.{number}{extension}"):
        number += 1
    return f"{stem}.{number}{extension}"
