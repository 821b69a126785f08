"""skip_file_discovery vae / text: the start-up cache checks are skipped, and the cache is trusted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cache_helpers import log_text, planned_latent_keys
from family_harness import train_in_process, write_two_class_project
from simpletuner.caching.store import TensorStore
from simpletuner.errors import DataError

pytestmark = pytest.mark.slow


def test_skipped_checks_trust_the_cache_and_unskipped_ones_repair_it(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    root = write_two_class_project(tmp_path, per_class=2)
    train_in_process(root, tiny_sdxl, "sdxl", "--cache_only")
    store = TensorStore(root / "cache" / "vae" / "latents")
    missing = planned_latent_keys(root, tiny_sdxl, "sdxl")["red_0.png"]
    store.remove(missing)
    caplog.set_level(logging.INFO)

    # Trusted: nothing is checked or encoded, so the hole is only met when training reads it.
    with pytest.raises(DataError, match="red_0.png .*without 'vae' in skip_file_discovery"):
        train_in_process(root, tiny_sdxl, "sdxl", "--skip_file_discovery", "vae,text", "--max_train_steps", "8",
                         "--train_batch_size", "1")
    logged = log_text(caplog)
    assert "latent cache: not checked (skip_file_discovery vae)" in logged
    assert "text-embed cache not checked (skip_file_discovery text)" in logged
    assert "encoded" not in logged
    assert not store.has(missing)

    caplog.clear()
    train_in_process(root, tiny_sdxl, "sdxl", "--skip_file_discovery", "text", "--cache_only")
    assert "'classes' latent cache: 3 reused, 1 encoded" in log_text(caplog)
    assert store.has(missing)
