"""The storages a run reads and writes for each configured dataset.

An image dataset has two or three: where its images are (``None`` for a local
folder, whose files discovery reads through the operating system directly, the
fast path), where its cache is (``cache_dir_vae``: ``discovery.json``,
``faces.json``, ``dataset_settings.json`` and, by default, latents) and where its
latents are (:func:`latents_of`; inside an image_embeds dataset when it names
one).  A text_embeds dataset has one, its ``cache_dir``.  S3 clients are made
once per dataset and shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Set, Tuple

from simpletuner.storage.base import Storage
from simpletuner.storage.local import LocalStorage
from simpletuner.storage.s3 import S3Settings, S3Storage, is_s3_url, split_s3_url

if TYPE_CHECKING:  # the schema imports this package; importing it back at run time would be circular
    from simpletuner.data.image_embeds import ImageEmbedConfig
    from simpletuner.data.schema import DataBackendConfig, DatasetConfig, TextEmbedConfig


def images_of(dataset: "DatasetConfig") -> Optional[S3Storage]:
    """The bucket holding an aws dataset's images, rooted at the bucket (keys are full object keys)."""
    if dataset.s3 is None:
        return None
    bucket, _prefix = split_s3_url(dataset.instance_data_dir)
    return dataset.s3.storage(bucket, "", "aws_bucket_name")


def data_prefix(dataset: "DatasetConfig") -> str:
    """The key prefix of an aws dataset's images ("" or ending in "/")."""
    return split_s3_url(dataset.instance_data_dir)[1]


def cache_of(dataset: "DatasetConfig") -> Storage:
    """The dataset's ``cache_dir_vae`` as a storage."""
    return _at(dataset.cache_dir_vae, dataset.s3, "cache_dir_vae")


def latents_of(dataset: "DatasetConfig") -> Storage:
    """Where the dataset's latents live: the one answer every reader and writer of latents uses."""
    if dataset.image_embeds is not None:
        return image_embeds_cache_of(dataset.image_embeds).child(dataset.id)
    return cache_of(dataset).child("latents")


def text_cache_of(dataset: "TextEmbedConfig") -> Storage:
    """A text_embeds dataset's ``cache_dir`` as a storage."""
    return _at(dataset.cache_dir, dataset.s3, "cache_dir")


def image_embeds_cache_of(dataset: "ImageEmbedConfig") -> Storage:
    """An image_embeds dataset's ``cache_dir`` as a storage (each image dataset's latents are a child)."""
    return _at(dataset.cache_dir, dataset.s3, "cache_dir")


def _at(location: str, s3: Optional[S3Settings], key: str) -> Storage:
    if is_s3_url(location):
        if s3 is None:  # the schema refuses this; a hand-built config could still try
            raise ValueError(f"{location} needs S3 settings")
        bucket, prefix = split_s3_url(location)
        return s3.storage(bucket, prefix, key)
    return LocalStorage(location)


# Where --delete_problematic_images / --delete_unwanted_images move an aws dataset's
# objects, at the bucket's root (see data/quarantine.py); never listed as images.
QUARANTINE_PREFIX = "rejected/"


def cache_prefixes_inside(dataset: "DatasetConfig") -> Set[str]:
    """Key prefixes (relative to the data prefix) of the dataset's caches that sit among its images."""
    images = images_of(dataset)
    if images is None:
        return set()
    prefix = data_prefix(dataset)
    inside = set()
    for cache in (cache_of(dataset), latents_of(dataset)):
        if isinstance(cache, S3Storage) and cache.bucket == images.bucket and cache.prefix.startswith(prefix) \
                and cache.prefix != prefix:
            inside.add(cache.prefix[len(prefix):])
    if not prefix:  # the whole bucket is the dataset, so its quarantine sits among the images
        inside.add(QUARANTINE_PREFIX)
    return inside


def remote_storages(backends: "DataBackendConfig") -> List[S3Storage]:
    """Every S3 bucket the run uses, once per dataset that reaches it."""
    candidates: List[Storage] = []
    for dataset in backends.image_datasets:
        images = images_of(dataset)
        if images is not None:
            candidates.append(images.child(data_prefix(dataset)))
        candidates.append(cache_of(dataset))
    candidates.extend(text_cache_of(t) for t in backends.text_embed_datasets)
    candidates.extend(image_embeds_cache_of(e) for e in backends.image_embed_datasets)
    seen: Set[Tuple[str, str]] = set()
    remote = []
    for storage in candidates:
        if isinstance(storage, S3Storage) and (storage.settings.owner, storage.bucket) not in seen:
            seen.add((storage.settings.owner, storage.bucket))
            remote.append(storage)
    return remote


def check_remote_storages(backends: "DataBackendConfig") -> None:
    """Reach every bucket once before anything is written, so bad S3 settings stop the run at start."""
    for storage in remote_storages(backends):
        storage.check()
