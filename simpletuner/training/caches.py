"""Filling the latent and text-embed caches before training starts.

Encoders are loaded only when something is missing and are released as soon
as their cache is complete, so the denoiser trains without them in memory.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from simpletuner.caching.latents import build_latent_cache, latent_keys, scan_latents
from simpletuner.caching.store import TensorStore
from simpletuner.caching.text_embeds import build_text_cache
from simpletuner.data.pipeline import PreparedData
from simpletuner.data.transforms import load_pixels
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.training.batches import CacheLookup

logger = logging.getLogger(__name__)


def text_encoder_identity(source: ModelSource, family: ModelFamily) -> str:
    parts = [source.identity(component) for component in family.text_components]
    return family.name + "|" + "||".join(parts)


def prepare_caches(
    family: ModelFamily, source: ModelSource, data: PreparedData, config: Any, accelerator: Any, show_progress: bool
) -> CacheLookup:
    shard = (accelerator.process_index, accelerator.num_processes)
    vae_identity = source.identity("vae")
    text_identity = text_encoder_identity(source, family)
    compress = config.compress_disk_cache
    latent_stores = {
        d.id: TensorStore(Path(d.cache_dir_vae) / "latents", compress) for d in data.backends.image_datasets
    }
    text_stores = {
        d.id: TensorStore(Path(data.backends.text_embeds_for(d).cache_dir), compress)
        for d in data.backends.image_datasets
    }
    device = accelerator.device

    failed: dict[str, list[str]] = {}
    for dataset_id, samples in data.samples.items():
        keys = latent_keys(samples, vae_identity, family.latent_normalisation)
        if data.backends.dataset(dataset_id).scan_for_errors:
            removed = scan_latents(samples, keys, latent_stores[dataset_id], family.vae_scale_factor, shard)
            logger.info("dataset '%s' cache scan: %d bad latent entries removed to be encoded again",
                        dataset_id, removed)
            accelerator.wait_for_everyone()
        report = build_latent_cache(
            samples,
            keys,
            latent_stores[dataset_id],
            load_vae=lambda: family.load_vae(source).to(device),
            encode=family.encode_images,
            load_pixels=load_pixels,
            batch_size=config.vae_batch_size,
            shard=shard,
            show_progress=show_progress,
        )
        failed[dataset_id] = report.failed
        logger.info("dataset '%s' latent cache: %s", dataset_id, report)
    gc.collect()
    _exclude_undecodable(data, failed, accelerator)

    for dataset_id, samples in data.samples.items():
        report = build_text_cache(
            [s.caption for s in samples],
            text_identity,
            text_stores[dataset_id],
            load_encoders=lambda: _text_encoders_on(family.load_text_encoders(source), device),
            encode=family.encode_text,
            batch_size=config.text_encoder_batch_size,
            shard=shard,
            show_progress=show_progress,
        )
        logger.info("dataset '%s' text-embed cache: %s", dataset_id, report)
    gc.collect()
    accelerator.wait_for_everyone()
    return CacheLookup(latent_stores, text_stores, vae_identity, text_identity, family.latent_normalisation)


def _exclude_undecodable(data: PreparedData, failed: dict[str, list[str]], accelerator: Any) -> None:
    """Images that failed to decode on any rank leave every rank's plan."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        merged: dict[str, list[str]] = {}
        for part in gather_object([failed]):
            for dataset_id, paths in part.items():
                merged.setdefault(dataset_id, []).extend(paths)
        failed = merged
    if any(failed.values()):
        data.exclude(failed)


def _text_encoders_on(text: Any, device: Any) -> Any:
    for encoder in text.encoders:
        encoder.to(device)
    return text
