"""A dataset's own aspect-ratio -> bucket-size table (``aspect_resolution_map``).

The bucket of an image is normally computed from ``resolution`` and its
aspect (see :mod:`simpletuner.data.buckets`).  A map replaces that result for
the aspects it lists: ``{"1.46": [1216, 832], "0.68": [832, 1216]}``, with
keys rounded to two decimals, the format SimpleTuner writes and reads.
Aspects the map does not list keep the computed bucket.

The map is given inline or as the path of a JSON file, and it is checked when
the dataset config is read: every size must be two positive multiples of
``aspect_bucket_alignment`` (VAEs and patch sizes need it), so a typo costs a
message rather than a crash in the VAE.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from simpletuner.errors import ConfigError

AspectMap = Tuple[Tuple[float, Tuple[int, int]], ...]  # sorted (aspect, (width, height)) pairs

KEY = "aspect_resolution_map"


def map_key(aspect: float) -> float:
    """How an aspect is looked up: rounded to two decimals, as the map's keys are."""
    return round(aspect, 2)


def mapped_bucket(aspect_map: AspectMap, aspect: float) -> Optional[Tuple[int, int]]:
    """The (width, height) the map gives ``aspect``, or None when it lists no such aspect."""
    wanted = map_key(aspect)
    for listed, size in aspect_map:
        if listed == wanted:
            return size
    return None


def parse_aspect_map(merged: Dict[str, Any], where: str) -> AspectMap:
    """Read and check the dataset's map (inline object or JSON file path); () when unset."""
    raw = merged.get(KEY)
    if not raw:
        return ()
    if isinstance(raw, str):
        raw = _read_file(raw, where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: key {KEY!r} must be an object like {{\"1.46\": [1216, 832]}} or the path "
                          f"of a JSON file holding one, got {type(raw).__name__}")
    alignment = merged["aspect_bucket_alignment"]
    pairs: Dict[float, Tuple[int, int]] = {}
    for text, size in raw.items():
        aspect = _aspect(text, where)
        pairs[map_key(aspect)] = _size(text, size, alignment, where)
    return tuple(sorted(pairs.items()))


def _read_file(path: str, where: str) -> Any:
    resolved = os.path.abspath(os.path.expanduser(path))
    try:
        with open(resolved, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{where}: key {KEY!r} = {path!r}: no such file (resolved to {resolved})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: key {KEY!r} = {path!r} cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: key {KEY!r} = {path!r} is not valid JSON (line {exc.lineno}, "
                          f"column {exc.colno}: {exc.msg})") from None


def _aspect(text: Any, where: str) -> float:
    try:
        aspect = float(text)
    except (TypeError, ValueError):
        aspect = float("nan")
    if not aspect > 0:
        raise ConfigError(f"{where}: key {KEY!r} has the entry {text!r}; its keys must be aspect ratios "
                          "(width / height) such as \"1.46\"")
    return aspect


def _size(text: str, size: Any, alignment: int, where: str) -> Tuple[int, int]:
    valid = (isinstance(size, (list, tuple)) and len(size) == 2
             and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))
    if not valid:
        raise ConfigError(f"{where}: key {KEY!r} entry {text!r} must be [width, height] in whole pixels, "
                          f"got {size!r}")
    if size[0] % alignment or size[1] % alignment:
        raise ConfigError(f"{where}: key {KEY!r} entry {text!r} = {list(size)} is not a multiple of "
                          f"aspect_bucket_alignment {alignment}; use sizes divisible by {alignment}")
    return int(size[0]), int(size[1])
