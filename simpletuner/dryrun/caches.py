"""What the latent and text-embed caches already hold for a run, and what it would encode.

Keys are computed exactly as the caching step computes them (the same sample
plan, VAE and text-encoder identities), so "cached" here means the run will
find the entry; only the presence of each entry is checked, not its contents.
"""

from __future__ import annotations

from typing import Any

from simpletuner.caching.keys import text_key
from simpletuner.caching.latents import latent_keys
from simpletuner.caching.store import TensorStore
from simpletuner.caching.vae_dtype import vae_identity
from simpletuner.data.pipeline import PreparedData
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.storage.datasets import latents_of, text_cache_of


def cache_lines(family: ModelFamily, source: ModelSource, data: PreparedData, config: Any) -> list[str]:
    """One line per image dataset's latents and per text-embed dataset's captions."""
    from simpletuner.training.caches import text_encoder_identity

    lines = []
    latent_identity = vae_identity(source, config)
    captions: dict[str, set[str]] = {}
    stores: dict[str, TensorStore] = {}
    for dataset_id, samples in data.cached_sets().items():
        dataset = data.backends.dataset(dataset_id)
        if "vae" in dataset.skip_file_discovery:
            lines.append(f"dataset {dataset_id!r} latents: not checked (skip_file_discovery vae)")
        else:
            store = TensorStore(latents_of(dataset), config.compress_disk_cache)
            keys = latent_keys(samples, latent_identity, family.latent_normalisation)
            held = sum(store.has(key) for key in keys)
            lines.append(f"dataset {dataset_id!r} latents in {store.root}: {_counted(held, len(keys), 'image')}")
        if "text" in dataset.skip_file_discovery or config.train_text_encoder:
            continue  # trained text encoders encode each step: nothing is cached for them
        text = data.backends.text_embeds_for(dataset_id)
        stores.setdefault(text.id, TensorStore(text_cache_of(text), config.compress_disk_cache))
        captions.setdefault(text.id, set()).update(sample.caption for sample in samples)
    identity = text_encoder_identity(source, family, config) if captions else ""
    for text_id, texts in captions.items():
        held = sum(stores[text_id].has(text_key(caption, identity)) for caption in texts)
        lines.append(f"text embeds {text_id!r} in {stores[text_id].root}: {_counted(held, len(texts), 'caption')}")
    if config.train_text_encoder:
        lines.append("text embeds: none cached (--train_text_encoder encodes the captions at every step)")
    return lines


def _counted(held: int, total: int, what: str) -> str:
    if held == total:
        return f"all {total} {what}(s) cached, nothing to encode"
    return f"{held} of {total} {what}(s) cached, {total - held} would be encoded"
