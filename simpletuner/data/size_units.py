"""A dataset's size keys in one unit: whole pixels, whatever ``resolution_type`` says.

``pixel`` and ``pixel_area`` give sizes in pixels.  ``area`` (SimpleTuner's
older spelling) gives them in megapixels, and v megapixels is exactly the
``pixel_area`` size whose square holds v · 1,000,000 pixels: an edge of
sqrt(v · 1,000,000), rounded to the nearest pixel (1.0 -> 1000, 0.25 -> 500,
1.05 -> 1025).  So an ``area`` dataset is rewritten to ``pixel_area`` once,
here, and buckets, filters, drift and cache keys only ever see pixels.  The
rewrite is logged and the values as written are returned, for
``DatasetConfig.megapixels``.

The keys are declared as numbers so a megapixel value can pass coercion;
this is where pixel values are held to whole numbers and their bounds.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Collection, Dict, Tuple

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

AREA = "area"
PIXELS_PER_MEGAPIXEL = 1_000_000
# 64 MP is an 8000x8000 image; a "megapixel" value above it is almost surely a pixel edge.
MAX_MEGAPIXELS = 64.0

# Every size key and the smallest pixel value it accepts (0 turns minimum_image_size off).
SIZE_KEYS: Dict[str, int] = {
    "resolution": 8,
    "minimum_image_size": 0,
    "maximum_image_size": 8,
    "target_downsample_size": 8,
}

Megapixels = Tuple[Tuple[str, float], ...]


def megapixels_to_edge(megapixels: float) -> int:
    """Edge in pixels of the square holding ``megapixels`` (half-up rounding)."""
    return int(math.floor(math.sqrt(megapixels * PIXELS_PER_MEGAPIXEL) + 0.5))


def resolve_size_units(
    merged: Dict[str, Any], where: str, inherited: Collection[str] = ()
) -> Tuple[Dict[str, Any], Megapixels]:
    """``merged`` with every set size key in whole pixels, and the megapixel values as written.

    ``inherited`` names the keys the dataset took from the global options, so
    a message can point at the flag to change.  With ``resolution_type``
    ``area`` the result has ``pixel_area``; the second item is empty otherwise.
    """
    resolved = dict(merged)
    if resolved["resolution_type"] != AREA:
        for key, lowest in SIZE_KEYS.items():
            if resolved.get(key) is not None:
                resolved[key] = _whole_pixels(resolved[key], lowest, resolved["resolution_type"],
                                              _name(key, where, inherited))
        return resolved, ()
    written = []
    for key, lowest in SIZE_KEYS.items():
        value = resolved.get(key)
        if value is None:
            continue
        resolved[key] = _edge(float(value), lowest, _name(key, where, inherited))
        written.append((key, float(value)))
    resolved["resolution_type"] = "pixel_area"
    shown = ", ".join(f"{key} {value:g} MP -> {resolved[key]} px" for key, value in written)
    logger.info("%s: resolution_type 'area' read as 'pixel_area' (%s)", where, shown)
    return resolved, tuple(written)


def _name(key: str, where: str, inherited: Collection[str]) -> str:
    return f"{where}: key {key!r}" + (f" (from --{key})" if key in inherited else "")


def _whole_pixels(value: float, lowest: int, resolution_type: str, name: str) -> int:
    if not float(value).is_integer():
        raise ConfigError(
            f"{name} = {value:g} must be a whole number of pixels with resolution_type "
            f"{resolution_type!r}; give pixels (e.g. 1024), or set resolution_type 'area' for megapixels"
        )
    if value < lowest:
        raise ConfigError(f"{name} must be at least {lowest} pixels, got {value:g}")
    return int(value)


def _edge(megapixels: float, lowest: int, name: str) -> int:
    if megapixels > MAX_MEGAPIXELS:
        raise ConfigError(
            f"{name} = {megapixels:g} is read as megapixels with resolution_type 'area' (about a "
            f"{megapixels_to_edge(megapixels)}-pixel square); if you meant {megapixels:g} pixels set "
            f"resolution_type 'pixel_area', otherwise give megapixels (1.0 is 1000x1000)"
        )
    edge = megapixels_to_edge(megapixels)
    if edge < lowest:
        smallest = max(lowest, 1) ** 2 / PIXELS_PER_MEGAPIXEL
        raise ConfigError(
            f"{name} = {megapixels:g} megapixels is a {edge}-pixel square; with resolution_type "
            f"'area' give at least {smallest:g} (an edge of {max(lowest, 1)} pixels)"
        )
    return edge
