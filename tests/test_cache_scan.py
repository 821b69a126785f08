"""scan_for_errors on planted entries: recreate re-encodes them, sync keeps them and moves the image.

Our keys hold the crop and target size, so a settings change can never leave
an entry of the wrong size behind; an entry copied in from elsewhere can.
Here two images' entries are replaced by sound latents of another size
(48x64 pixels instead of 64x64), as such a copy would leave them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from cache_helpers import log_text, planned_latent_keys, record_batches
from family_harness import train_in_process, write_two_class_project
from simpletuner.caching.store import TensorStore

pytestmark = pytest.mark.slow
PLANTED = ("red_0.png", "red_1.png")


def _plant(tmp_path: Path, model: Path) -> tuple[Path, TensorStore, dict[str, torch.Tensor], dict[str, str]]:
    root = write_two_class_project(tmp_path, per_class=4)
    train_in_process(root, model, "sdxl", "--cache_only", "--train_batch_size", "2")
    keys = planned_latent_keys(root, model, "sdxl")
    store = TensorStore(root / "cache" / "vae" / "latents")
    channels = store.load(keys[PLANTED[0]])["latent"].shape[0]
    planted = {}
    for index, name in enumerate(PLANTED):
        planted[name] = torch.randn(channels, 6, 8, generator=torch.Generator().manual_seed(index))
        store.save(keys[name], {"latent": planted[name]})
    mdb = root / "mdb.json"
    mdb.write_text(mdb.read_text().replace('"caption_strategy"', '"scan_for_errors": true, "caption_strategy"'))
    return root, store, planted, keys


def test_sync_keeps_a_sound_entry_of_another_size_and_trains_the_image_in_its_bucket(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch, caplog
) -> None:
    root, store, planted, keys = _plant(tmp_path, tiny_sdxl)
    files = {name: store.path_for(keys[name]).read_bytes() for name in PLANTED}
    seen = record_batches(monkeypatch)
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        # 6 images in 64x64 and the 2 moved ones in 64x48 (w x h): 4 batches of 2, one epoch.
        train_in_process(root, tiny_sdxl, "sdxl", "--vae_cache_scan_behaviour", "sync",
                         "--train_batch_size", "2", "--max_train_steps", "4")
    messages = log_text(caplog)
    assert "cache scan: 0 bad latent entries removed" in messages
    assert "2 image(s) moved to the bucket their cached latent was encoded for" in messages
    assert "red_0.png -> 64x48" in messages
    assert "8 reused, 0 encoded" in messages, "sync must not re-encode the kept entries"
    assert {name: store.path_for(keys[name]).read_bytes() for name in PLANTED} == files

    trained = {s.record.relative_path: (s, latent) for b in seen for s, latent in zip(b.samples, b.batch["latents"])}
    assert len(trained) == 8
    for name in PLANTED:
        sample, latent = trained[name]
        assert sample.target_size == (48, 64)
        assert torch.equal(latent, planted[name])
    moved_batch = next(b for b in seen if b.samples[0].record.relative_path in PLANTED)
    # SDXL's time_ids carry the bucket the latent really has (target size is the last pair).
    assert moved_batch.batch["time_ids"][:, 4:].tolist() == [[48, 64], [48, 64]]
    assert all(trained[f"blue_{i}.png"][0].target_size == (64, 64) for i in range(4))


def test_recreate_deletes_an_entry_of_another_size_and_encodes_it_again(
    tmp_path: Path, tiny_sdxl: Path, caplog
) -> None:
    root, store, planted, keys = _plant(tmp_path, tiny_sdxl)
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--train_batch_size", "2", "--max_train_steps", "1")
    messages = log_text(caplog)
    assert "cache scan: 2 bad latent entries removed" in messages
    assert "6 reused, 2 encoded" in messages
    assert "moved to the bucket" not in messages
    for name in PLANTED:
        assert store.load(keys[name])["latent"].shape[-2:] == (8, 8)


def test_an_entry_of_another_size_is_refused_with_advice_when_nothing_scans(tmp_path: Path, tiny_sdxl: Path) -> None:
    from simpletuner.errors import DataError

    root, store, planted, keys = _plant(tmp_path, tiny_sdxl)
    mdb = root / "mdb.json"
    mdb.write_text(mdb.read_text().replace('"scan_for_errors": true, ', ""))
    with pytest.raises(DataError, match="needs \\(8, 8\\); set \"scan_for_errors\": true"):
        train_in_process(root, tiny_sdxl, "sdxl", "--train_batch_size", "2", "--max_train_steps", "4")
