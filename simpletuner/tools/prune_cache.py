"""``python -m simpletuner.tools.prune_cache [--delete] <train.py options>``: cache entries nothing uses.

Give it the options of the run whose caches you want to tidy (the same
command line, or the same ``config/config.json``); it plans every dataset
exactly as ``train.py`` would, without loading a model, and lists, per
latent and text-embed cache, the entry files the plan does not use: latents
of crops, sizes or settings used before, of images since edited or
removed, and embeds of captions since changed.  Nothing is removed unless
``--delete`` is given, and then only the files it has just listed.

Run it while no training run uses these caches.  Datasets that draw fresh
crops each epoch (``vae_cache_clear_each_epoch``) or keep entries of another
size through a ``sync`` scan are not pruned: which entries they use is not
known before training.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

from simpletuner.errors import USER_ERROR_EXIT_CODE, UserError

DELETE_FLAG = "--delete"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delete = DELETE_FLAG in argv
    argv = [a for a in argv if a != DELETE_FLAG]
    from simpletuner.logs import setup_logging

    # Before the first torch import: library chatter stays off the console.
    setup_logging(os.environ)
    try:
        return _run(argv, delete)
    except UserError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def _run(argv: list[str], delete: bool) -> int:
    from simpletuner.config.loader import load_config
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    config = load_config(argv)
    family = get_family(config.model_family, config)
    source = ModelSource.from_config(config, family)
    found = _orphans(config, family, source)
    total = sum(len(o.names) for _, o in found)
    for label, orphans in found:
        print(f"{label} ({orphans.store.root}): {orphans.in_use} entries in use, {len(orphans.names)} not used"
              + (f" ({orphans.size / 1e6:.1f} MB)" if orphans.names else ""))
        for name in orphans.names:
            print(f"  {name}")
    if not total:
        print("nothing to remove")
    elif delete:
        for _, orphans in found:
            orphans.remove()
        print(f"removed {total} unused entries")
    else:
        print(f"dry run: nothing removed; add {DELETE_FLAG} to remove these {total} files")
    return 0


def _orphans(config: Any, family: Any, source: Any) -> list[tuple[str, Any]]:
    from simpletuner.caching.keys import text_key
    from simpletuner.caching.latents import latent_keys
    from simpletuner.caching.prune import orphaned_entries
    from simpletuner.caching.store import TensorStore
    from simpletuner.caching.text_embeds import EMPTY_PROMPT
    from simpletuner.caching.vae_dtype import vae_identity as latent_vae_identity
    from simpletuner.data.pipeline import load_backends, plan_one
    from simpletuner.storage.datasets import latents_of, text_cache_of
    from simpletuner.training.caches import text_encoder_identity

    backends = load_backends(config)
    vae_identity = latent_vae_identity(source, config)
    text_identity = text_encoder_identity(source, family, config)
    results: list[tuple[str, Any]] = []
    captions: dict[str, set[str]] = {}
    text_configs = {}
    for dataset in backends.image_datasets:
        _, samples, _ = plan_one(dataset, show_progress=False)
        text_config = backends.text_embeds_for(dataset)
        text_configs[text_config.id] = text_config
        captions.setdefault(text_config.id, {EMPTY_PROMPT}).update(s.caption for s in samples)
        if dataset.vae_cache_clear_each_epoch or (
            dataset.scan_for_errors and config.vae_cache_scan_behaviour == "sync"
        ):
            print(f"dataset {dataset.id!r} latents: not pruned (its entries are only known while training)")
            continue
        keys = latent_keys(samples, vae_identity, family.latent_normalisation)
        results.append((f"dataset {dataset.id!r} latents", orphaned_entries(TensorStore(latents_of(dataset)), keys)))
    for text_id, texts in captions.items():
        store = TensorStore(text_cache_of(text_configs[text_id]))
        keys = [text_key(caption, text_identity) for caption in texts]
        results.append((f"dataset {text_id!r} text embeds", orphaned_entries(store, keys)))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
