"""vae_cache_clear_each_epoch: fresh random crops (and their latents) every epoch."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cache_helpers import log_text, record_batches
from family_harness import train_in_process
from simpletuner.errors import ConfigError
from simpletuner.tools.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow


def _project(root: Path, clear_each_epoch: bool, crop_style: str = "random") -> Path:
    # 96x64 images cropped square at 64: a 32-pixel range for the window's left edge.
    make_demo_dataset(root / "data", count=4, sizes=((96, 64),))
    dataset = {"id": "wide", "type": "local", "instance_data_dir": str(root / "data"),
               "cache_dir_vae": str(root / "cache/vae"), "caption_strategy": "textfile", "resolution": 64,
               "resolution_type": "pixel", "aspect_bucket_alignment": 16, "crop": True,
               "crop_style": crop_style, "crop_aspect": "square"}
    if clear_each_epoch:
        dataset["vae_cache_clear_each_epoch"] = True
    (root / "mdb.json").write_text(json.dumps([
        dataset, {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(root / "cache/text")},
    ]))
    return root


def _per_epoch(root: Path, model: Path, monkeypatch) -> dict[int, dict[str, tuple]]:
    """epoch -> relative path -> (crop top-left, latent), over 3 epochs of 2 batches."""
    seen = record_batches(monkeypatch)
    train_in_process(root, model, "sdxl", "--train_batch_size", "2", "--max_train_steps", "6")
    result: dict[int, dict[str, tuple]] = {}
    for batch in seen:
        for sample, latent in zip(batch.samples, batch.batch["latents"]):
            result.setdefault(batch.epoch, {})[sample.record.relative_path] = (sample.crop_top_left, latent)
    assert sorted(result) == [0, 1, 2] and all(len(v) == 4 for v in result.values())
    return result


def test_each_epoch_trains_fresh_crops_and_the_cache_holds_only_the_current_one(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch, caplog
) -> None:
    root = _project(tmp_path, clear_each_epoch=True)
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        epochs = _per_epoch(root, tiny_sdxl, monkeypatch)
    for earlier, later in ((0, 1), (1, 2)):
        moved = [p for p in epochs[later] if epochs[later][p][0] != epochs[earlier][p][0]]
        assert len(moved) >= 3, f"crops barely changed from epoch {earlier} to {later}"
        for path in epochs[later]:
            same_crop = epochs[later][path][0] == epochs[earlier][path][0]
            assert torch.equal(epochs[later][path][1], epochs[earlier][path][1]) == same_crop, path
    # The window moves along the image's free width only; the bucket stays.
    assert all(top == 0 and 0 <= left <= 32 for e in epochs.values() for (top, left), _ in e.values())
    assert "latents re-encoded with new crops for epoch 2" in log_text(caplog)
    assert len(list((root / "cache/vae").rglob("*.safetensors"))) == 4, "old epochs' latents were not dropped"


def test_without_the_key_every_epoch_trains_the_same_latents(tmp_path: Path, tiny_sdxl: Path, monkeypatch) -> None:
    epochs = _per_epoch(_project(tmp_path, clear_each_epoch=False), tiny_sdxl, monkeypatch)
    for path, (crop, latent) in epochs[0].items():
        for later in (1, 2):
            assert epochs[later][path][0] == crop and torch.equal(epochs[later][path][1], latent)


def test_a_resumed_run_with_fresh_crops_and_caption_dropout_repeats_the_uninterrupted_one(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    root = _project(tmp_path, clear_each_epoch=True)
    flags = ("--train_batch_size", "2", "--max_train_steps", "6", "--caption_dropout_probability", "0.5",
             "--learning_rate", "1e-3")
    # The checkpoint falls mid-epoch 1, so the resumed run must re-encode epoch 1's crops itself.
    whole = train_in_process(root, tiny_sdxl, "sdxl", *flags, "--checkpointing_steps", "3")
    shutil.copytree(whole / "checkpoint-3", root / "resumed" / "checkpoint-3")
    resumed = train_in_process(root, tiny_sdxl, "sdxl", *flags, "--resume_from_checkpoint", "latest",
                               output_name="resumed")
    expected = load_file(whole / "pytorch_lora_weights.safetensors")
    actual = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_the_key_needs_random_crops(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, clear_each_epoch=True, crop_style="center")
    with pytest.raises(ConfigError, match="'vae_cache_clear_each_epoch' .* needs 'crop': true and 'crop_style': 'random'"):
        train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", "1")
