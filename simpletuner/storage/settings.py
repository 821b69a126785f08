"""Reading a dataset's ``type`` and ``aws_*`` keys into where its images and caches live.

The schema calls these while it checks multidatabackend.json, so every
mistake is reported before anything is scanned.  Rules:

* ``type: aws`` needs ``aws_bucket_name``; the images are the objects under
  ``aws_data_prefix`` (the whole bucket when it is empty).  ``instance_data_dir``
  belongs to local datasets and is refused there rather than ignored.
* A cache location (``cache_dir_vae``, ``cache_dir``) written ``s3://bucket/prefix``
  lives in that bucket, reached with the dataset's aws settings; anything else
  is a local folder.  An aws ``text_embeds`` or ``image_embeds`` dataset caches in its bucket:
  ``cache_dir`` is an ``s3://`` URL or, when left empty, ``aws_data_prefix``
  in ``aws_bucket_name`` (SimpleTuner's convention).
* ``aws_*`` keys on a local dataset are refused (they would do nothing).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from simpletuner.errors import ConfigError, DataError
from simpletuner.storage.s3 import SCHEME, S3Settings, is_s3_url, normalise_prefix, split_s3_url

_CACHE_OF = {"text_embeds": "text-embedding", "image_embeds": "latent"}
AWS_KEYS = ("aws_bucket_name", "aws_region_name", "aws_endpoint_url", "aws_access_key_id",
            "aws_secret_access_key", "aws_data_prefix")


def s3_settings(values: Mapping[str, Any], where: str) -> Optional[S3Settings]:
    """The dataset's S3 connection when ``type`` is aws, else None (after checking no aws key is set)."""
    if values.get("type", "local") != "aws":
        stray = [key for key in AWS_KEYS if values.get(key) not in (None, "")]
        if stray:
            raise ConfigError(
                f"{where}: key {stray[0]!r} only applies to type 'aws'; set \"type\": \"aws\" or remove it"
            )
        return None
    if not values.get("aws_bucket_name"):
        raise DataError(
            f"{where}: key 'aws_bucket_name' is required for type 'aws'; set it to the bucket holding the images"
        )
    key_id, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
    if bool(key_id) != bool(secret):
        missing = "aws_secret_access_key" if key_id else "aws_access_key_id"
        raise DataError(
            f"{where}: key {missing!r} is missing; set both aws_access_key_id and aws_secret_access_key, "
            "or neither to use the AWS environment variables or profile"
        )
    return S3Settings(
        owner=where,
        region=values.get("aws_region_name") or None,
        endpoint_url=values.get("aws_endpoint_url") or None,
        access_key_id=key_id or None,
        secret_access_key=secret or None,
    )


def image_location(values: Mapping[str, Any], where: str) -> str:
    """``s3://bucket/prefix`` of an aws image dataset's images."""
    if values.get("instance_data_dir"):
        raise ConfigError(
            f"{where}: key 'instance_data_dir' is for local datasets; an aws dataset's images are the "
            "objects under 'aws_data_prefix' in 'aws_bucket_name', so remove it"
        )
    return f"{SCHEME}{values['aws_bucket_name']}/{normalise_prefix(values.get('aws_data_prefix'))}"


def cache_location(value: Optional[str], key: str, where: str, s3: Optional[S3Settings]) -> str:
    """An absolute local folder, or a checked ``s3://bucket/prefix/`` URL."""
    if not is_s3_url(value):
        return os.path.abspath(os.path.expanduser(str(value)))
    if s3 is None:
        raise ConfigError(
            f"{where}: key {key!r} = {value!r} is an S3 location, which needs \"type\": \"aws\" and the "
            "aws_* keys saying how to reach the bucket; set them or use a local folder"
        )
    bucket, prefix = split_s3_url(str(value))
    if not bucket:
        raise DataError(f"{where}: key {key!r} = {value!r} names no bucket; write it as s3://bucket/prefix")
    return f"{SCHEME}{bucket}/{prefix}"


def embed_cache_location(values: Mapping[str, Any], where: str, s3: Optional[S3Settings]) -> str:
    """Where a text_embeds or image_embeds dataset's entries go (see the module notes for aws datasets)."""
    value = values.get("cache_dir")
    kind = values.get("dataset_type", "text_embeds")
    if s3 is None:
        if not value:
            raise ConfigError(
                f"{where}: key 'cache_dir' is required for dataset_type {kind}; set it to a folder "
                f"for its {_CACHE_OF[kind]} cache"
            )
        return cache_location(value, "cache_dir", where, None)
    if not value:
        return f"{SCHEME}{values['aws_bucket_name']}/{normalise_prefix(values.get('aws_data_prefix'))}"
    if values.get("aws_data_prefix"):
        raise ConfigError(
            f"{where}: keys 'cache_dir' and 'aws_data_prefix' both say where the {_CACHE_OF[kind]} cache goes; "
            "keep one"
        )
    if not is_s3_url(value):
        raise ConfigError(
            f"{where}: key 'cache_dir' = {value!r} is a local folder but the dataset's type is 'aws'; write "
            "it as s3://bucket/prefix, leave it empty to use aws_bucket_name/aws_data_prefix, or set type local"
        )
    return cache_location(value, "cache_dir", where, s3)
