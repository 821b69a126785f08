"""Noticing when the settings that shape a dataset's plan change between runs.

The plan (bucket, resize and crop of every image) is pure arithmetic on the
image sizes discovery saved and the dataset's current settings, so it is
rebuilt from scratch on every run: changing ``resolution`` or ``crop`` can
never leave a stale bucket list behind, and there is nothing to override.
Caches are safe too: a latent's cache key holds its exact geometry (resize,
crop box, target size), so entries made under the old settings are simply
not used; they stay on disk until ``<cache_dir_vae>/latents`` is deleted.

What this module adds is that the change is *said*: the settings that shaped
the last plan are kept in ``<cache_dir_vae>/dataset_settings.json`` with the
bucket counts they produced, and a run that finds different ones logs which
keys changed (old -> new) and how the buckets moved, so a typo in a config
is noticed at start-up rather than as a strangely behaving model.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Tuple

from simpletuner.data.schema import DatasetConfig

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
        value = getattr(dataset, key)
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


def _show(value: Any) -> str:
    return json.dumps(value)


def record_settings(dataset: DatasetConfig, buckets: Mapping[Tuple[int, int], int]) -> List[str]:
    """Compare with the saved settings, save the current ones; return "key: old -> new" lines.

    An empty list means nothing changed (or this is the first run).  The
    caller logs the changes; :func:`describe_changes` makes the message.
    """
    path = os.path.join(dataset.cache_dir_vae, SETTINGS_FILE)
    current = plan_settings(dataset)
    counts = {f"{w}x{h}": n for (w, h), n in sorted(buckets.items())}
    saved = _load(path)
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
    if saved is None or saved.get("settings") != current or saved.get("buckets") != counts:
        from simpletuner.data.discovery import write_json_atomic

        try:
            write_json_atomic(path, {"version": _VERSION, "settings": current, "buckets": counts})
        except OSError as exc:  # discovery already proved the folder writable; do not fail the run here
            logger.warning("dataset %r: could not save %s (%s)", dataset.id, path, exc)
    return changes


def describe_changes(dataset: DatasetConfig, changes: List[str]) -> str:
    return (
        f"dataset {dataset.id!r}: settings changed since the last run ({'; '.join(changes)}); "
        "the plan was rebuilt from the new settings. Latents cached under the old settings are not "
        f"used; delete {os.path.join(dataset.cache_dir_vae, 'latents')} to reclaim their space"
    )


def _describe(counts: Mapping[str, int], limit: int = 4) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    text = ", ".join(f"{bucket}: {n}" for bucket, n in top)
    return text + (", ..." if len(counts) > limit else "") if counts else "none"


def _load(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    return data
