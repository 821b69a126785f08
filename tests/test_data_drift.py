"""Changed dataset settings are noticed and the plan is rebuilt; preserve_data_backend_cache."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from simpletuner.data.drift import SETTINGS_FILE
from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import parse_data_backend_config


class Config:
    train_batch_size = 1
    override_dataset_config = False


class OverridingConfig(Config):
    override_dataset_config = True


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 40, 0, 0)).save(folder / f"img{i}.png")


def _prepare(tmp_path, override=False, **keys):
    entry = {"id": "pics", "instance_data_dir": str(tmp_path / "images"), "cache_dir_vae": str(tmp_path / "vae"),
             "resolution": 64, "aspect_bucket_alignment": 16, **keys}
    backends = parse_data_backend_config(
        [entry, {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}], {})
    return prepare_training_data(OverridingConfig if override else Config, backends, show_progress=False)


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


def _plant_cached_latent(tmp_path):
    latents = tmp_path / "vae" / "latents"
    latents.mkdir(parents=True, exist_ok=True)
    (latents / "entry.safetensors").write_bytes(b"planted")


def test_a_change_that_would_re_encode_cached_latents_stops(tmp_path, caplog):
    from simpletuner.errors import DataError

    _images(tmp_path / "images", [(96, 64), (64, 64)])
    _prepare(tmp_path)
    _plant_cached_latent(tmp_path)
    settings_file = tmp_path / "vae" / SETTINGS_FILE
    saved_before = settings_file.read_text()

    with pytest.raises(DataError) as stopped:
        _prepare(tmp_path, resolution=32)
    message = str(stopped.value)
    assert "\n" not in message
    assert "dataset 'pics'" in message and "resolution: 64 -> 32" in message
    assert "--override_dataset_config" in message
    assert settings_file.read_text() == saved_before  # nothing recorded for the refused settings

    unchanged = _prepare(tmp_path)  # the old settings still work
    assert len(unchanged.samples["pics"]) == 2


def test_override_dataset_config_rebuilds_despite_cached_latents(tmp_path, caplog):
    _images(tmp_path / "images", [(96, 64), (64, 64)])
    _prepare(tmp_path)
    _plant_cached_latent(tmp_path)
    caplog.set_level(logging.WARNING)

    rebuilt = _prepare(tmp_path, resolution=32, override=True)
    assert all(max(s.target_size) <= 48 for s in rebuilt.samples["pics"])
    assert "resolution: 64 -> 32" in caplog.text
    assert json.loads((tmp_path / "vae" / SETTINGS_FILE).read_text())["settings"]["resolution"] == 32
    _prepare(tmp_path, resolution=32)  # the new settings are now the recorded ones


def test_override_dataset_config_is_an_option(tmp_path):
    from simpletuner.config.loader import load_config

    config = load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", "m",
                          "--data_backend_config", "d.json", "--output_dir", "o",
                          "--override_dataset_config"], env={}, cwd=tmp_path)
    assert config.override_dataset_config is True


def test_skip_file_discovery_aspect_or_metadata_trusts_the_saved_file_list(tmp_path):
    _images(tmp_path / "images", [(64, 64), (64, 64)])
    _prepare(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "images" / "added_later.png")
    for skipped in ("aspect", "metadata", "vae aspect"):  # SimpleTuner writes it space-separated
        kept = _prepare(tmp_path, skip_file_discovery=skipped)
        assert [s.record.relative_path for s in kept.samples["pics"]] == ["img0.png", "img1.png"], skipped
    assert len(_prepare(tmp_path, skip_file_discovery="vae").samples["pics"]) == 3  # vae alone lists the folder


def test_global_skip_file_discovery_is_every_datasets_default(tmp_path):
    _images(tmp_path / "images", [(64, 64)])
    entry = {"id": "pics", "instance_data_dir": str(tmp_path / "images"), "cache_dir_vae": str(tmp_path / "vae")}
    text = {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}
    inherited = parse_data_backend_config([entry, text], {"skip_file_discovery": ["vae", "text"]})
    assert inherited.image_datasets[0].skip_file_discovery == ("vae", "text")
    own = parse_data_backend_config([{**entry, "skip_file_discovery": "aspect"}, text],
                                    {"skip_file_discovery": ["vae"]})
    assert own.image_datasets[0].skip_file_discovery == ("aspect",)
