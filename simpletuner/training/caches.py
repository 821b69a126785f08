"""Filling the latent and text-embed caches before training starts.

Encoders are loaded only when something is missing and are released as soon
as their cache is complete, so the denoiser trains without them in memory.
The VAE is loaded at most once, and the text encoders only after it is
released: the two are never in memory together (what SimpleTuner's
``--offload_during_startup`` arranges by moving the text encoders off the
accelerator).  The VAE stays only when a dataset re-encodes every epoch.

With several processes each rank takes a fixed share of every dataset's
entries (the same split whatever is already cached), and all ranks wait for
each other before training.
"""

from __future__ import annotations

import gc
import logging
import weakref
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from simpletuner.caching.latents import build_latent_cache, latent_keys, scan_latents
from simpletuner.caching.store import TensorStore
from simpletuner.caching.vae_dtype import vae_dtype, vae_identity, warn_if_vae_overflows
from simpletuner.caching.text_embeds import build_text_cache
from simpletuner.data.pipeline import PreparedData
from simpletuner.data.records import TrainingSample
from simpletuner.data.transforms import load_pixels
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.quantisation.text_encoders import identity_suffix, quantise_text_encoders
from simpletuner.storage.datasets import latents_of, text_cache_of
from simpletuner.training.batches import CacheLookup
from simpletuner.training.epoch_latents import EpochCrops
from simpletuner.training.ondemand_latents import OnDemandLatents

logger = logging.getLogger(__name__)


def text_encoder_identity(source: ModelSource, family: ModelFamily, config: Any = None) -> str:
    """What the text-embed cache key says about the encoders: their files, with
    ``config`` the precision they run at (quantised encoders give other embeds),
    and the family's options that shape the embeds (``family.text_settings``)."""
    parts = [source.identity(component) for component in family.text_components]
    suffix = identity_suffix(config) if config is not None else ""
    return family.name + "|" + "||".join(parts) + suffix + family.text_settings()


class _Loaded:
    """A model loaded on first use and dropped on :meth:`release`."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._model: Optional[Any] = None

    def get(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def release(self) -> None:
        if self._model is None:
            return
        alive = weakref.ref(self._model)
        self._model = None
        # Models are normally freed right here by reference counting; a full
        # collection costs about half a second, so it runs only when a
        # reference cycle kept the model alive, before the next model loads.
        if alive() is not None:
            gc.collect()


def prepare_caches(
    family: ModelFamily, source: ModelSource, data: PreparedData, config: Any, accelerator: Any,
    show_progress: bool, seed: int = 0, extra_prompts: Sequence[str] = (),
) -> CacheLookup:
    """Make every cache entry the run needs; ``seed`` draws the per-epoch crops.

    ``extra_prompts`` (validation prompts) are encoded into every text-embed
    dataset beside the captions, so validation reads them like any caption.
    """
    shard = (accelerator.process_index, accelerator.num_processes)
    compress = config.compress_disk_cache
    lookup = CacheLookup(
        latent_stores={d.id: TensorStore(latents_of(d), compress)
                       for d in data.backends.image_datasets},
        text_stores={d.id: TensorStore(text_cache_of(data.backends.text_embeds_for(d)), compress)
                     for d in data.backends.image_datasets},
        vae_identity=vae_identity(source, config),
        text_identity=text_encoder_identity(source, family, config),
        normalisation=family.latent_normalisation,
        scale_factor=family.vae_scale_factor,
    )
    warn_if_vae_overflows(family, source, config)
    vae = _Loaded(lambda: family.load_vae(source, vae_dtype(config)).to(accelerator.device))
    failed: dict[str, list[str]] = {}
    ondemand = getattr(config, "vae_cache_ondemand", False) and not config.cache_only
    for dataset_id in list(data.cached_sets()):  # the held-out dataset too: it is evaluated from the cache
        if "vae" in data.backends.dataset(dataset_id).skip_file_discovery:
            logger.info("dataset '%s' latent cache: not checked (skip_file_discovery vae)", dataset_id)
            continue
        if data.backends.dataset(dataset_id).scan_for_errors:
            _scan(dataset_id, data, lookup, config.vae_cache_scan_behaviour, accelerator)
        if ondemand:
            logger.info("dataset '%s' latent cache: encoded as batches first need it (--vae_cache_ondemand)",
                        dataset_id)
            continue
        samples = data.cached_sets()[dataset_id]
        report = build_latent_cache(
            samples,
            latent_keys(samples, lookup.vae_identity, lookup.normalisation, lookup.key_overrides),
            lookup.latent_stores[dataset_id],
            load_vae=vae.get,
            encode=family.encode_images,
            load_pixels=load_pixels,
            batch_size=config.vae_batch_size,
            shard=shard,
            show_progress=show_progress,
        )
        failed[dataset_id] = report.failed
        logger.info("dataset '%s' latent cache%s: %s", dataset_id, _process_tag(accelerator), report)
    _exclude_undecodable(data, failed, accelerator)
    recropped = {d.id: data.samples[d.id] for d in data.backends.image_datasets
                 if d.vae_cache_clear_each_epoch and d.id in data.samples}
    if recropped:
        lookup.epoch_crops = EpochCrops(recropped, seed, lookup, vae.get, family.encode_images, load_pixels,
                                        config.vae_batch_size, accelerator)
    if ondemand:  # the VAE loads at the first missing entry, after the text encoders are gone
        lookup.ondemand = OnDemandLatents(vae.get, family.encode_images, load_pixels, config.vae_batch_size)
    if not (recropped or ondemand):
        vae.release()

    _build_text_caches(family, source, data, config, accelerator, lookup.text_identity, show_progress, extra_prompts)
    accelerator.wait_for_everyone()
    return lookup


def _build_text_caches(
    family: ModelFamily, source: ModelSource, data: PreparedData, config: Any, accelerator: Any,
    identity: str, show_progress: bool, extra_prompts: Sequence[str] = (),
) -> None:
    """One pass per text-embed dataset over the captions of every image dataset using it.

    One pass, not one per image dataset: shares are split over the whole
    caption list, so two passes over one store could hand a caption to two ranks.
    """
    captions: dict[str, list[str]] = {}
    configs = {}
    for dataset_id, samples in data.cached_sets().items():
        if "text" in data.backends.dataset(dataset_id).skip_file_discovery:
            logger.info("dataset '%s' captions: text-embed cache not checked (skip_file_discovery text)", dataset_id)
            continue
        text_config = data.backends.text_embeds_for(dataset_id)
        configs[text_config.id] = text_config
        # Trained text encoders (--train_text_encoder) encode each step: caching their captions would be stale.
        trained = config.train_text_encoder
        captions.setdefault(text_config.id, []).extend(() if trained else (s.caption for s in samples))
    for texts in captions.values():
        texts.extend(extra_prompts)
    encoders = _Loaded(lambda: quantise_text_encoders(family.load_text_encoders(source), config, accelerator.device))
    for text_id, texts in captions.items():
        report = build_text_cache(
            texts,
            identity,
            TensorStore(text_cache_of(configs[text_id]), config.compress_disk_cache),
            load_encoders=encoders.get,
            encode=family.encode_text,
            batch_size=config.text_encoder_batch_size,
            shard=(accelerator.process_index, accelerator.num_processes),
            show_progress=show_progress,
        )
        logger.info("dataset '%s' text-embed cache%s: %s", text_id, _process_tag(accelerator), report)
    encoders.release()


def _scan(dataset_id: str, data: PreparedData, lookup: CacheLookup, behaviour: str, accelerator: Any) -> None:
    """``scan_for_errors``: check every entry; ``sync`` moves samples to the bucket of their entry."""
    samples = data.cached_sets()[dataset_id]
    keys = latent_keys(samples, lookup.vae_identity, lookup.normalisation, lookup.key_overrides)
    shard = (accelerator.process_index, accelerator.num_processes)
    result = scan_latents(samples, keys, lookup.latent_stores[dataset_id], lookup.scale_factor, shard, behaviour)
    removed, resized = result.removed, dict(result.resized)
    for part in _gather(accelerator, (result.removed, result.resized))[1:]:
        removed += part[0]
        resized.update(part[1])
    logger.info("dataset '%s' cache scan: %d bad latent entries removed to be encoded again", dataset_id, removed)
    if not resized:
        return
    moved: list[TrainingSample] = list(samples)
    for index, size in sorted(resized.items()):
        moved[index] = replace(samples[index], target_size=size)
        lookup.key_overrides[moved[index]] = keys[index]
    data.replace_samples(dataset_id, moved)
    shown = ", ".join(f"{moved[i].record.relative_path} -> {moved[i].bucket[0]}x{moved[i].bucket[1]}"
                      for i in sorted(resized)[:5])
    logger.warning("dataset '%s' cache scan (sync): %d image(s) moved to the bucket their cached latent was "
                   "encoded for: %s%s", dataset_id, len(resized), shown, ", ..." if len(resized) > 5 else "")


def _gather(accelerator: Any, value: Any) -> list:
    """``value`` from every rank, this rank's first (collective with several processes)."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    values = gather_object([value])
    mine = values.pop(accelerator.process_index)
    return [mine, *values]


def _exclude_undecodable(data: PreparedData, failed: dict[str, list[str]], accelerator: Any) -> None:
    """Images that failed to decode on any rank leave every rank's plan."""
    merged: dict[str, list[str]] = {}
    for part in _gather(accelerator, failed):
        for dataset_id, paths in part.items():
            merged.setdefault(dataset_id, []).extend(paths)
    if any(merged.values()):
        data.exclude(merged)


def _process_tag(accelerator: Any) -> str:
    if accelerator.num_processes == 1:
        return ""
    return f" (rank {accelerator.process_index} of {accelerator.num_processes})"
