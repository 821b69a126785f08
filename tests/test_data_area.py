"""resolution_type area: sizes in megapixels, planned exactly like pixel_area at sqrt(v * 1e6) pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from simpletuner.config.loader import load_config
from simpletuner.data.buckets import plan_dataset
from simpletuner.data.drift import plan_settings
from simpletuner.data.pipeline import load_backends
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError

TEXT = {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}


@pytest.fixture
def image_entry(tmp_path):
    (tmp_path / "images").mkdir()

    def entry(**extra):
        values = {"id": "photos", "instance_data_dir": str(tmp_path / "images"),
                  "cache_dir_vae": str(tmp_path / "vae"), "aspect_bucket_alignment": 8}
        values.update(extra)
        return values

    return entry


def _dataset(entry, defaults=None):
    return parse_data_backend_config([entry, TEXT], defaults or {}).image_datasets[0]


def _error(entry, defaults=None) -> str:
    with pytest.raises(ConfigError) as info:
        _dataset(entry, defaults)
    message = str(info.value)
    assert "\n" not in message and "dataset 'photos'" in message
    return message


def _records():
    sizes = [(500, 500), (1200, 800), (800, 1200), (640, 360), (2000, 1000), (3000, 3000), (200, 200), (300, 280)]
    return [ImageRecord(path=f"/data/{w}x{h}.png", relative_path=f"{w}x{h}.png", width=w, height=h,
                        size_bytes=1, mtime_ns=1, caption="c") for w, h in sizes]


@pytest.mark.parametrize("crop, crop_aspect", [(False, "square"), (True, "preserve"), (True, "square")])
def test_area_plans_every_image_like_pixel_area_at_the_converted_edge(image_entry, crop, crop_aspect):
    shared = dict(crop=crop, crop_aspect=crop_aspect, crop_style="random")
    area = _dataset(image_entry(resolution_type="area", resolution=0.25, minimum_image_size=0.09,
                                maximum_image_size=1.0, target_downsample_size=0.5625, **shared))
    pixels = _dataset(image_entry(resolution_type="pixel_area", resolution=500, minimum_image_size=300,
                                  maximum_image_size=1000, target_downsample_size=750, **shared))
    assert (area.resolution, area.resolution_type, area.minimum_image_size) == (500, "pixel_area", 300)
    area_plan, pixel_plan = plan_dataset(_records(), area), plan_dataset(_records(), pixels)
    assert area_plan == pixel_plan
    samples, skipped = area_plan
    assert skipped == {"below minimum_image_size": ["200x200.png", "300x280.png"]}
    assert {s.target_size for s in samples} >= {(504, 504)}  # 500 rounded to the 8-pixel alignment
    # Same geometry, so switching a dataset from area to its pixel_area spelling is not a settings change.
    assert plan_settings(area) == plan_settings(pixels)


def test_the_megapixel_values_as_written_are_kept_and_the_rewrite_is_logged(image_entry, caplog):
    with caplog.at_level(logging.INFO, logger="simpletuner.data.size_units"):
        area = _dataset(image_entry(resolution_type="area", resolution="1.05", minimum_image_size=1))
    assert area.megapixels == (("resolution", 1.05), ("minimum_image_size", 1.0))
    assert (area.resolution, area.minimum_image_size) == (1025, 1000)  # sqrt(1.05e6) = 1024.7
    assert "dataset 'photos'" in caplog.text and "resolution 1.05 MP -> 1025 px" in caplog.text
    assert _dataset(image_entry(resolution=1024)).megapixels == ()


def test_one_megapixel_trains_square_images_at_1024_with_the_usual_alignment(image_entry):
    area = _dataset(image_entry(resolution_type="area", resolution=1.0, aspect_bucket_alignment=64))
    samples, _ = plan_dataset(_records()[:1], area)
    assert area.resolution == 1000 and samples[0].target_size == (1024, 1024)


@pytest.mark.parametrize("resolution_type", ["pixel", "pixel_area"])
@pytest.mark.parametrize("key, value", [("resolution", 512.5), ("resolution", "0.25"), ("minimum_image_size", 0.5),
                                        ("maximum_image_size", 1.5)])
def test_fractional_pixels_are_rejected(image_entry, resolution_type, key, value):
    extra = {"target_downsample_size": 1} if key == "maximum_image_size" else {}
    message = _error(image_entry(resolution_type=resolution_type, **{key: value}, **extra))
    assert f"key {key!r}" in message and "whole number of pixels" in message and "'area'" in message


def test_whole_pixel_values_written_as_numbers_still_work(image_entry):
    dataset = _dataset(image_entry(resolution_type="pixel", resolution=512.0, minimum_image_size="256"))
    assert (dataset.resolution, dataset.minimum_image_size) == (512, 256)
    assert isinstance(dataset.resolution, int) and dataset.megapixels == ()
    assert "at least 8 pixels" in _error(image_entry(resolution=4))


@pytest.mark.parametrize("key", ["resolution", "minimum_image_size"])
def test_a_pixel_value_given_as_megapixels_suggests_pixel_area(image_entry, key):
    message = _error(image_entry(resolution_type="area", **{"resolution": 1.0, key: 1024}))
    assert f"key {key!r} = 1024" in message and "megapixels" in message and "'pixel_area'" in message


def test_a_resolution_too_small_to_bucket_is_rejected(image_entry):
    message = _error(image_entry(resolution_type="area", resolution=0.00001))
    assert "key 'resolution'" in message and "3-pixel" in message and "at least 6.4e-05" in message


def test_global_area_resolution_is_the_dataset_default(image_entry):
    defaults = {"resolution": 0.25, "resolution_type": "area", "minimum_image_size": 0.0625}
    dataset = _dataset(image_entry(), defaults)
    assert (dataset.resolution, dataset.resolution_type, dataset.minimum_image_size) == (500, "pixel_area", 250)
    own_pixels = _dataset(image_entry(resolution_type="pixel", resolution=768, minimum_image_size=512), defaults)
    assert (own_pixels.resolution, own_pixels.resolution_type, own_pixels.megapixels) == (768, "pixel", ())
    message = _error(image_entry(resolution_type="pixel_area"), defaults)
    assert "key 'resolution' (from --resolution) = 0.25" in message and "whole number" in message


def test_global_area_with_the_pixel_default_resolution_is_refused(image_entry):
    message = _error(image_entry(), {"resolution": 1024.0, "resolution_type": "area"})
    assert "(from --resolution) = 1024" in message and "'pixel_area'" in message


def test_area_on_the_command_line_reaches_the_datasets(tmp_path: Path, image_entry):
    backend = tmp_path / "multidatabackend.json"
    backend.write_text(json.dumps([image_entry(), image_entry(id="hires", resolution=1.0,
                                                              cache_dir_vae=str(tmp_path / "vae2")), TEXT]))
    config = load_config(["--model_family", "sdxl", "--print_config", "--pretrained_model_name_or_path", "base",
                          "--data_backend_config", str(backend), "--resolution_type", "area",
                          "--resolution", "0.25"], env={}, cwd=tmp_path)
    assert config.resolution_type == "area"
    photos, hires = load_backends(config).image_datasets
    assert (photos.resolution, hires.resolution) == (500, 1000)
    assert photos.resolution_type == hires.resolution_type == "pixel_area"
