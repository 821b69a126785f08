"""Noticing when the settings that shape a dataset's plan change between runs.

The plan (bucket, resize and crop of every image) is pure arithmetic on the
image sizes discovery saved and the dataset's current settings, so it is
rebuilt from scratch on every run and can never hold a stale bucket list.
Caches cannot go stale either: a latent's cache key holds its exact geometry,
so entries made under other settings are simply not used.

What this module adds is that a change is *said*, and that it never throws
away work by accident.  The settings that shaped the last plan are kept in
``<cache_dir_vae>/dataset_settings.json`` with the bucket counts they
produced and a fingerprint of every image's geometry (resize, crop, target
size: exactly what a latent is encoded from).  A run that finds different
settings:

- when the geometry is the same (``resolution`` 64 -> 80 with alignment 64
  still trains at 64): says so in one line and goes on; nothing is re-encoded;
- while the dataset has no cached latents yet: rebuilds the plan and logs
  which keys changed (old -> new) and how the buckets moved;
- when cached latents exist, which the new geometry would leave unused and
  re-encode from scratch: stops, naming the changed keys, unless
  ``--override_dataset_config`` says the change is intended.  A typo in a
  config then costs a message, not an evening of re-encoding.

It never advises deleting the latent folder: images whose geometry did not
change still use their entries there.  ``python -m simpletuner.tools.prune_cache``
lists (and removes) the entries nothing uses any more.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from simpletuner.data.records import TrainingSample
from simpletuner.data.report import group_by_bucket
from simpletuner.data.schema import DatasetConfig
from simpletuner.errors import DataError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "dataset_settings.json"
_VERSION = 1

# DatasetConfig fields that decide each image's bucket, resize and crop.
PLAN_KEYS: Tuple[str, ...] = (
    "resolution",
    "resolution_type",
    "crop",
    "crop_style",
    "crop_aspect",
    "crop_aspect_buckets",
    "aspect_resolution_map",
    "aspect_bucket_alignment",
    "aspect_bucket_rounding",
    "minimum_image_size",
    "maximum_image_size",
    "target_downsample_size",
    "minimum_aspect_ratio",
    "maximum_aspect_ratio",
)


def plan_settings(dataset: DatasetConfig) -> Dict[str, Any]:
    """The dataset's plan-shaping settings as JSON values."""
    values = {}
    for key in PLAN_KEYS:
        # Through JSON, so nested tuples compare equal to what a saved file reads back.
        values[key] = json.loads(json.dumps(getattr(dataset, key)))
    return values


def _show(value: Any) -> str:
    return json.dumps(value)


def plan_fingerprint(samples: Sequence[TrainingSample]) -> str:
    """A digest of what every latent is encoded from: path, resize, crop and target size."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.record.relative_path):
        line = [sample.record.relative_path, sample.intermediate_size, sample.crop_top_left, sample.target_size]
        digest.update(json.dumps(line).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:32]


@dataclass
class Drift:
    """What changed since the last run: "key: old -> new" lines, and whether any image's geometry did."""

    changes: List[str] = field(default_factory=list)
    plan_changed: bool = False


def record_settings(dataset: DatasetConfig, samples: Sequence[TrainingSample], override: bool = False) -> Drift:
    """Compare with the saved settings and plan, save the current ones; return what changed.

    Empty ``changes`` means the settings did not change (or this is the
    first run).  The caller logs a change; :func:`describe_changes` makes the
    message.  Raises :class:`DataError` (saving nothing) when the geometry of
    the images changed while the dataset has cached latents, unless ``override``.
    """
    from simpletuner.storage.datasets import cache_of

    storage = cache_of(dataset)
    current = plan_settings(dataset)
    counts = {f"{w}x{h}": len(members) for (w, h), members in group_by_bucket(samples).items()}
    fingerprint = plan_fingerprint(samples)
    saved = _load(storage)
    drift = Drift()
    if saved is not None:
        before = saved.get("settings", {})
        for key in PLAN_KEYS:
            if key in before and before[key] != current[key]:
                drift.changes.append(f"{key}: {_show(before[key])} -> {_show(current[key])}")
        old_counts = saved.get("buckets", {})
        if drift.changes and old_counts != counts:
            drift.changes.append(f"buckets: {len(old_counts)} -> {len(counts)} "
                                 f"({_describe(old_counts)} -> {_describe(counts)})")
        # A file from before fingerprints were saved cannot tell: assume the geometry changed.
        drift.plan_changed = bool(drift.changes) and saved.get("plan") != fingerprint
    if drift.plan_changed and not override and has_cached_latents(dataset):
        raise DataError(
            f"dataset {dataset.id!r}: settings changed since its latents were cached "
            f"({'; '.join(drift.changes)}); its images would be encoded again. Restore the old values, "
            "or pass --override_dataset_config to rebuild with the new ones"
        )
    record = {"version": _VERSION, "settings": current, "buckets": counts, "plan": fingerprint}
    if saved != record:
        from simpletuner.storage.base import write_json

        try:
            write_json(storage, SETTINGS_FILE, record)
        except OSError as exc:  # discovery already proved the folder writable; do not fail the run here
            logger.warning("dataset %r: could not save %s (%s)", dataset.id, storage.location(SETTINGS_FILE), exc)
    return drift


def describe_changes(dataset: DatasetConfig, drift: Drift) -> str:
    changed = "; ".join(drift.changes)
    if not drift.plan_changed:
        return (f"dataset {dataset.id!r}: settings changed since the last run ({changed}), but every image keeps "
                "its size and crop: cached latents stay in use")
    return (
        f"dataset {dataset.id!r}: settings changed since the last run ({changed}); the plan was rebuilt from "
        "the new settings and images whose size or crop changed are encoded again. To list the latents "
        "nothing uses any more, run python -m simpletuner.tools.prune_cache with this run's options "
        "(add --delete to remove them)"
    )


def has_cached_latents(dataset: DatasetConfig) -> bool:
    from simpletuner.storage.datasets import latents_of

    try:  # the first listed entry answers it, in a folder or in a bucket
        return any(True for _ in latents_of(dataset).list())
    except OSError:
        return False


def _describe(counts: Mapping[str, int], limit: int = 4) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    text = ", ".join(f"{bucket}: {n}" for bucket, n in top)
    return text + (", ..." if len(counts) > limit else "") if counts else "none"


def _load(storage: Any) -> Any:
    from simpletuner.storage.base import read_json

    try:
        data = read_json(storage, SETTINGS_FILE)
    except (OSError, ValueError):  # absent or damaged: as if this were the first run
        return None
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    return data
