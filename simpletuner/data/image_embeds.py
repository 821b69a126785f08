"""``image_embeds`` datasets: a place for image datasets' latents, apart from their images.

An image dataset that says ``"image_embeds": "<id>"`` keeps its latents in
``<that dataset's cache_dir>/<image dataset id>/`` (a local folder or an S3
prefix), so several image datasets can share one image_embeds dataset without
their entries mixing.  Its bookkeeping (``discovery.json``, ``faces.json``,
``dataset_settings.json``) stays in its own ``cache_dir_vae``, as in
SimpleTuner, where only the VAE cache moves.

An image_embeds dataset holds nothing to train on: it has only a location, so
keys that shape or caption images are refused on it rather than ignored, and an
image_embeds dataset no image dataset names is refused too (a forgotten
``image_embeds`` key would otherwise leave the latents in ``cache_dir_vae``
without a word).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from simpletuner.errors import ConfigError
from simpletuner.storage.s3 import S3Settings
from simpletuner.storage.settings import AWS_KEYS, embed_cache_location, s3_settings

if TYPE_CHECKING:  # the schema imports this module
    from simpletuner.data.schema import DatasetConfig

# The only keys that mean something on an image_embeds dataset.
ALLOWED_KEYS = frozenset(("id", "dataset_type", "type", "disabled", "cache_dir") + AWS_KEYS)


@dataclass(frozen=True)
class ImageEmbedConfig:
    """One enabled image_embeds dataset: where the latents of the image datasets naming it go."""

    id: str
    cache_dir: str  # absolute folder, or s3://bucket/prefix/
    type: str = "local"
    s3: Optional[S3Settings] = None  # type aws: how to reach cache_dir's bucket


def image_embed_config(values: Dict[str, Any]) -> ImageEmbedConfig:
    """Check one image_embeds entry (values as the schema coerced them)."""
    where = f"dataset {values['id']!r}"
    stray = sorted(key for key, value in values.items() if key not in ALLOWED_KEYS and value is not None)
    if stray:
        raise ConfigError(
            f"{where}: key {stray[0]!r} does not apply to an image_embeds dataset, which only says where "
            "latents go (cache_dir, type and the aws_* keys); move it to the image dataset or remove it"
        )
    kind = values.get("type", "local")
    if kind not in ("local", "aws"):
        raise ConfigError(f"{where}: an image_embeds dataset's type must be 'local' or 'aws', not {kind!r}")
    s3 = s3_settings(values, where)
    return ImageEmbedConfig(id=values["id"], cache_dir=embed_cache_location(values, where, s3), type=kind, s3=s3)


def attach_image_embeds(
    image_sets: Tuple["DatasetConfig", ...], image_raw: List[Dict[str, Any]],
    embed_sets: Tuple[ImageEmbedConfig, ...], file_name: str,
) -> Tuple["DatasetConfig", ...]:
    """Give each image dataset the image_embeds dataset its ``image_embeds`` key names.

    ``image_raw`` are the image entries' own values, in the order of ``image_sets``.
    """
    by_id = {e.id: e for e in embed_sets}
    used = set()
    attached = []
    for dataset, values in zip(image_sets, image_raw):
        wanted = values.get("image_embeds")
        if wanted is None:
            attached.append(dataset)
            continue
        where = f"dataset {dataset.id!r}"
        if wanted not in by_id:
            valid = ", ".join(sorted(by_id)) or "none; add one with \"dataset_type\": \"image_embeds\""
            raise ConfigError(
                f"{where}: key 'image_embeds' = {wanted!r} names no enabled image_embeds dataset; "
                f"use one of: {valid}"
            )
        _check_folder_name(dataset.id, where)
        used.add(wanted)
        attached.append(dataclasses.replace(dataset, image_embeds=by_id[wanted]))
    unused = [e.id for e in embed_sets if e.id not in used]
    if unused:
        raise ConfigError(
            f"dataset {unused[0]!r} in {file_name}: no image dataset names this image_embeds dataset; add "
            f"\"image_embeds\": \"{unused[0]}\" to the image datasets whose latents belong there, or set "
            "\"disabled\": true"
        )
    return tuple(attached)


def _check_folder_name(dataset_id: str, where: str) -> None:
    """The id becomes a folder (or key prefix) under the shared cache_dir: it must stay inside it."""
    if dataset_id in (".", "..") or any(c in dataset_id for c in "/\\") or dataset_id != dataset_id.strip():
        raise ConfigError(
            f"{where}: its latents go to a folder named after its id inside the image_embeds cache_dir, "
            f"so the id {dataset_id!r} must not contain '/' or '\\', be '.' or '..', or start or end with spaces; "
            "rename it"
        )
