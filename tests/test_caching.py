"""The latent and text-embed caches: keys, reproducibility, and bad entries."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from family_harness import train_in_process, write_two_class_project
from simpletuner.caching.keys import latent_key, latent_sample_seed
from simpletuner.data.records import ImageRecord, TrainingSample


def _sample(mtime_ns: int = 1, crop=(0, 0)) -> TrainingSample:
    record = ImageRecord("/d/a.png", "a.png", 64, 64, 100, mtime_ns, "a cat")
    return TrainingSample("d", record, (64, 64), (64, 64), crop, (64, 64))


def test_touching_a_file_changes_the_key_but_not_the_sampled_latent() -> None:
    original, touched = _sample(mtime_ns=1), _sample(mtime_ns=2)
    assert latent_key(original, "vae", "norm") != latent_key(touched, "vae", "norm")
    assert latent_sample_seed(original) == latent_sample_seed(touched)
    assert latent_sample_seed(original) != latent_sample_seed(_sample(crop=(0, 8)))


@pytest.mark.parametrize("ingredient", ["size", "crop", "target", "vae", "norm"])
def test_every_ingredient_enters_the_latent_key(ingredient: str) -> None:
    base = _sample()
    changed = {
        "size": replace(base, record=base.record.replace(size_bytes=101)),
        "crop": replace(base, crop_top_left=(4, 0)),
        "target": replace(base, target_size=(48, 64)),
    }.get(ingredient, base)
    vae = "other-vae" if ingredient == "vae" else "vae"
    norm = "other-norm" if ingredient == "norm" else "norm"
    assert latent_key(changed, vae, norm) != latent_key(base, "vae", "norm")


@pytest.mark.slow
def test_an_image_that_fails_to_decode_while_caching_is_left_out(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    root = write_two_class_project(tmp_path, per_class=4)
    damaged = root / "data" / "red_damaged.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(damaged)
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle - 8 : middle + 8] = b"\xff" * 16  # corrupt the compressed pixels; header and end stay intact
    damaged.write_bytes(bytes(data))
    (root / "data" / "red_damaged.txt").write_text("red")
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        output = train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", "2", "--train_batch_size", "2")
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "8 encoded, 1 undecodable" in messages
    assert "red_damaged.png" in messages


def _latent_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in (root / "cache" / "vae").rglob("*.safetensors*")}


@pytest.mark.slow
def test_cache_only_then_truncated_and_corrupt_entries_are_encoded_again(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    root = write_two_class_project(tmp_path, per_class=4)
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        output = train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2")
    assert not (output / "pytorch_lora_weights.safetensors").exists(), "--cache_only must not train"
    entries = sorted((root / "cache" / "vae").rglob("*.safetensors"))
    assert len(entries) == 8
    # 1. a truncated entry is caught by the cheap header check every run does
    entries[0].write_bytes(entries[0].read_bytes()[:-10])
    untouched = {p: p.stat().st_mtime_ns for p in entries[1:]}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", "1", "--train_batch_size", "2")
    assert "7 reused, 1 encoded (1 replacing damaged entries)" in "\n".join(r.getMessage() for r in caplog.records)
    assert {p: p.stat().st_mtime_ns for p in entries[1:]} == untouched

    # 2. a complete entry holding NaNs is only caught by the dataset's scan_for_errors
    from safetensors.torch import load_file, save_file

    poisoned = load_file(entries[1])
    poisoned["latent"][0, 0, 0] = float("nan")
    save_file(poisoned, entries[1])
    mdb = root / "mdb.json"
    mdb.write_text(mdb.read_text().replace('"caption_strategy"', '"scan_for_errors": true, "caption_strategy"'))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", "1", "--train_batch_size", "2")
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "cache scan: 1 bad latent entries removed" in messages
    assert "7 reused, 1 encoded" in messages
    assert load_file(entries[1])["latent"].isfinite().all()


@pytest.mark.slow
def test_compressed_and_plain_entries_are_both_readable(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    root = write_two_class_project(tmp_path, per_class=4)
    train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--compress_disk_cache", "--train_batch_size", "2")
    assert len(list((root / "cache").rglob("*.safetensors.z"))) == 8 + 3  # latents + two captions + the empty prompt
    assert not list((root / "cache").rglob("*.safetensors"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):  # flag off: compressed entries still serve
        train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", "2", "--train_batch_size", "2")
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "8 reused, 0 encoded" in messages and "3 reused, 0 encoded" in messages


def test_compression_shrinks_padded_t5_style_embeds(tmp_path: Path) -> None:
    import torch

    from simpletuner.caching.store import TensorStore

    embeds = torch.zeros(300, 64)
    embeds[:12] = torch.randn(12, 64)  # a short caption padded to T5's 300 tokens
    plain, packed = TensorStore(tmp_path / "plain"), TensorStore(tmp_path / "packed", compress=True)
    plain.save("ab" * 20, {"prompt_embeds": embeds})
    packed.save("ab" * 20, {"prompt_embeds": embeds})
    saving = 1 - packed.path_for("ab" * 20).stat().st_size / plain.path_for("ab" * 20).stat().st_size
    assert saving > 0.4, f"only {saving:.0%} saved"
    assert torch.equal(packed.load("ab" * 20)["prompt_embeds"], embeds)


def test_ranks_split_the_entries_the_same_way_whatever_the_other_has_written(tmp_path: Path) -> None:
    """Rank 1 starting after rank 0 finished must still encode exactly its own share, not re-split
    the entries that are missing by then (which would leave some to nobody)."""
    import torch

    from simpletuner.caching.latents import build_latent_cache
    from simpletuner.caching.store import TensorStore

    samples = [replace(_sample(), record=_sample().record.replace(relative_path=f"{i}.png")) for i in range(10)]
    keys = [latent_key(s, "vae", "norm") for s in samples]
    store = TensorStore(tmp_path)
    store.save(keys[3], {"latent": torch.zeros(4, 8, 8)})  # cached by an earlier run

    def encode(vae, pixels, generators):
        return torch.zeros(len(generators), 4, 8, 8)

    reports = [
        build_latent_cache(samples, keys, store, lambda: None, encode, lambda s: torch.zeros(3, 64, 64),
                           batch_size=3, shard=(rank, 2), show_progress=False)
        for rank in (0, 1)  # one after the other: the worst interleaving
    ]
    assert [r.encoded for r in reports] == [5, 4] and [r.reused for r in reports] == [0, 1]
    assert all(store.is_intact(k) for k in keys)
