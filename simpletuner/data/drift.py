"""Noticing when the settings that shape a dataset's plan change between runs.

The plan (bucket, resize and crop of every image) is pure arithmetic on the
image sizes discovery saved and the dataset's current settings, so it is
rebuilt from scratch on every run and can never hold a stale bucket list.
Caches cannot go stale either: a latent's cache key holds its exact geometry,
so entries made under other settings are simply not used.

What this module adds is that a change is *said*, and that it never throws
away work by accident.  The settings that shaped the last plan are kept in
``<cache_dir_vae>/dataset_settings.json`` with the bucket counts they
produced.  A run that finds different ones:

- while the dataset has no cached latents yet: rebuilds the plan and logs
  which keys changed (old -> new) and how the buckets moved;
- when cached latents exist, which the new geometry would leave unused and
  re-encode from scratch: stops, naming the changed keys, unless
  ``--override_dataset_config`` says the change is intended.  A typo in a
  config then costs a message, not an evening of re-encoding.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Mapping, Tuple

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


def record_settings(
    dataset: DatasetConfig, buckets: Mapping[Tuple[int, int], int], override: bool = False
) -> List[str]:
    """Compare with the saved settings, save the current ones; return "key: old -> new" lines.

    An empty list means nothing changed (or this is the first run).  The
    caller logs the changes; :func:`describe_changes` makes the message.
    Raises :class:`DataError` (saving nothing) when settings changed while the
    dataset has cached latents, unless ``override``.
    """
    from simpletuner.storage.datasets import cache_of

    storage = cache_of(dataset)
    current = plan_settings(dataset)
    counts = {f"{w}x{h}": n for (w, h), n in sorted(buckets.items())}
    saved = _load(storage)
    changes: List[str] = []
    if saved is not None:
        before = saved.get("settings", {})
        for key in PLAN_KEYS:
            if key in before and before[key] != current[key]:
                changes.append(f"{key}: {_show(before[key])} -> {_show(current[key])}")
        old_counts = saved.get("buckets", {})
        if changes and old_counts != counts:
            changes.append(f"buckets: {len(old_counts)} -> {len(counts)} "
                           f"({_describe(old_counts)} -> {_describe(counts)})")
    if changes and not override and has_cached_latents(dataset):
        raise DataError(
            f"dataset {dataset.id!r}: settings changed since its latents were cached "
            f"({'; '.join(changes)}); its images would be encoded again. Restore the old values, "
            "or pass --override_dataset_config to rebuild with the new ones"
        )
    if saved is None or saved.get("settings") != current or saved.get("buckets") != counts:
        from simpletuner.storage.base import write_json

        try:
            write_json(storage, SETTINGS_FILE, {"version": _VERSION, "settings": current, "buckets": counts})
        except OSError as exc:  # discovery already proved the folder writable; do not fail the run here
            logger.warning("dataset %r: could not save %s (%s)", dataset.id, storage.location(SETTINGS_FILE), exc)
    return changes


def describe_changes(dataset: DatasetConfig, changes: List[str]) -> str:
    return (
        f"dataset {dataset.id!r}: settings changed since the last run ({'; '.join(changes)}); "
        "the plan was rebuilt from the new settings. Latents cached under the old settings are not "
        f"used; delete {latents_folder(dataset)} to reclaim their space"
    )


def latents_folder(dataset: DatasetConfig) -> str:
    from simpletuner.storage.datasets import latents_of

    return str(latents_of(dataset).location())


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
