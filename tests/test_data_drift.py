"""Changed dataset settings are noticed and the plan is rebuilt; preserve_data_backend_cache."""

from __future__ import annotations

import json
import logging

from PIL import Image

from simpletuner.data.drift import SETTINGS_FILE
from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import parse_data_backend_config


class Config:
    train_batch_size = 1


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 40, 0, 0)).save(folder / f"img{i}.png")


def _prepare(tmp_path, **keys):
    entry = {"id": "pics", "instance_data_dir": str(tmp_path / "images"), "cache_dir_vae": str(tmp_path / "vae"),
             "resolution": 64, "aspect_bucket_alignment": 16, **keys}
    backends = parse_data_backend_config(
        [entry, {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}], {})
    return prepare_training_data(Config, backends, seed=0, show_progress=False)


def test_changed_settings_rebuild_the_plan_and_say_what_changed(tmp_path, caplog):
    _images(tmp_path / "images", [(96, 64), (64, 96), (64, 64)])
    caplog.set_level(logging.WARNING)
    first = _prepare(tmp_path)
    assert len(first.report.counts["pics"]) == 3  # three aspect buckets
    assert "settings changed" not in caplog.text
    saved = json.loads((tmp_path / "vae" / SETTINGS_FILE).read_text())
    assert saved["settings"]["resolution"] == 64 and saved["settings"]["crop"] is False

    second = _prepare(tmp_path)
    assert "settings changed" not in caplog.text

    cropped = _prepare(tmp_path, crop=True, crop_aspect="square", resolution=32)
    assert cropped.report.counts["pics"] == {(32, 32): 3}  # rebuilt from the new settings
    message = caplog.text
    assert "dataset 'pics': settings changed since the last run" in message
    assert "resolution: 64 -> 32" in message and "crop: false -> true" in message
    assert "buckets: 3 -> 1" in message and "latents" in message
    assert second.report.counts == first.report.counts


def test_preserve_data_backend_cache_trusts_the_saved_file_list(tmp_path):
    _images(tmp_path / "images", [(64, 64), (64, 64)])
    first = _prepare(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "images" / "added_later.png")
    kept = _prepare(tmp_path, preserve_data_backend_cache=True)
    assert [s.record.relative_path for s in kept.samples["pics"]] == ["img0.png", "img1.png"]
    assert len(first.samples["pics"]) == 2
    fresh = _prepare(tmp_path)
    assert len(fresh.samples["pics"]) == 3
