"""Checks across keys of one image dataset (run by the schema while loading multidatabackend.json).

Single keys are checked by their declarations (type, choices, bounds); these
are the rules that involve several keys or a referenced file: instance
prompt settings, the downsample and aspect limits, crop_aspect_buckets, and
the parquet block.  Every message names the dataset and the keys, and says
what to do.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from simpletuner.data.tables import ParquetSpec, parse_parquet_block
from simpletuner.errors import ConfigError


def filter_source(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else os.path.abspath(os.path.expanduser(str(value)))


def check_captions(merged: Dict[str, Any], where: str) -> None:
    needs_prompt = [k for k in ("only_instance_prompt", "prepend_instance_prompt") if merged.get(k)]
    if merged["caption_strategy"] == "instanceprompt":
        needs_prompt.insert(0, "caption_strategy 'instanceprompt'")
    if needs_prompt and not merged.get("instance_prompt"):
        raise ConfigError(
            f"{where}: key 'instance_prompt' is required with {needs_prompt[0]}; "
            "set it to the caption (or trigger word) every image should get"
        )
    if merged.get("only_instance_prompt") and merged.get("prepend_instance_prompt"):
        raise ConfigError(f"{where}: keys 'only_instance_prompt' and 'prepend_instance_prompt' are both "
                          "set; keep one (only replaces captions, prepend keeps them after the prompt)")


def check_sizes(merged: Dict[str, Any], where: str) -> None:
    maximum, target = merged.get("maximum_image_size"), merged.get("target_downsample_size")
    if (maximum is None) != (target is None):
        raise ConfigError(f"{where}: keys 'maximum_image_size' and 'target_downsample_size' work together; "
                          "set both or neither")
    if maximum is not None and target > maximum:
        raise ConfigError(f"{where}: key 'target_downsample_size' = {target} is larger than "
                          f"'maximum_image_size' = {maximum}; downsampling must make images smaller")
    low, high = merged.get("minimum_aspect_ratio"), merged.get("maximum_aspect_ratio")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}: key 'minimum_aspect_ratio' = {low} is above 'maximum_aspect_ratio' = "
                          f"{high}; no image could pass")


def check_epoch_recrop(merged: Dict[str, Any], where: str) -> None:
    """vae_cache_clear_each_epoch re-draws random crop windows; any other crop would encode the same latents."""
    if merged.get("vae_cache_clear_each_epoch") and not (merged["crop"] and merged["crop_style"] == "random"):
        raise ConfigError(f"{where}: key 'vae_cache_clear_each_epoch' re-encodes with fresh random crops each "
                          "epoch, so it needs 'crop': true and 'crop_style': 'random'; set those or remove the key")


def aspect_buckets(merged: Dict[str, Any], where: str) -> Tuple[float, ...]:
    raw = merged.get("crop_aspect_buckets") or ()
    if isinstance(raw, (str, int, float)):
        raw = [raw]
    try:
        ratios = tuple(sorted({float(v) for v in raw}))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: key 'crop_aspect_buckets' must be a list of numbers "
                          f"(width / height), got {raw!r}") from None
    if any(r <= 0 or r != r for r in ratios):
        raise ConfigError(f"{where}: key 'crop_aspect_buckets' values must be positive, got {list(raw)!r}")
    if merged["crop"] and merged["crop_aspect"] in ("closest", "random") and not ratios:
        raise ConfigError(
            f"{where}: crop_aspect {merged['crop_aspect']!r} chooses from 'crop_aspect_buckets', which is "
            "empty; set it, e.g. [0.75, 1.0, 1.33]"
        )
    return ratios


def parquet_spec(merged: Dict[str, Any], where: str, data_dir: str) -> Optional[ParquetSpec]:
    users = [k for k, v in (("caption_strategy", "parquet"), ("metadata_backend", "parquet")) if merged[k] == v]
    block = merged.get("parquet")
    if not block:
        if users:
            raise ConfigError(f"{where}: {users[0]} 'parquet' needs a 'parquet' block, e.g. "
                              '{"path": "captions.parquet", "filename_column": "filename", '
                              '"caption_column": "caption"}')
        return None
    spec = parse_parquet_block(block, where, data_dir)
    if merged["metadata_backend"] == "parquet" and not (spec.width_column and spec.height_column):
        raise ConfigError(f"{where}: metadata_backend 'parquet' reads sizes from the table; set the parquet "
                          "block's 'width_column' and 'height_column'")
    return spec
