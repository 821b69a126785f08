"""aspect_resolution_map: listed aspects take the user's bucket size, the rest keep the computed one."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError

SIZES = {"wide.png": (96, 64), "tall.png": (64, 96), "square.png": (64, 64)}


class Config:
    train_batch_size = 1
    override_dataset_config = False


def _entry(tmp_path, **keys):
    folder = tmp_path / "images"
    if not folder.exists():
        folder.mkdir()
        for name, size in SIZES.items():
            Image.new("RGB", size, "red").save(folder / name)
    return {"id": "pics", "instance_data_dir": str(folder), "cache_dir_vae": str(tmp_path / "vae"),
            "resolution": 64, "resolution_type": "pixel_area", "aspect_bucket_alignment": 16, **keys}


def _buckets(tmp_path, **keys):
    backends = parse_data_backend_config(
        [_entry(tmp_path, **keys), {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}], {})
    data = prepare_training_data(Config, backends, show_progress=False)
    return {s.record.relative_path: s.bucket for s in data.samples["pics"]}


def test_listed_aspects_take_the_mapped_size_and_others_are_computed(tmp_path):
    computed = _buckets(tmp_path)
    assert computed["wide.png"] == (80, 48)  # sqrt(64² * 1.5) and sqrt(64² / 1.5), to multiples of 16
    mapped = _buckets(tmp_path, aspect_resolution_map={"1.5": [96, 64], "0.5": [48, 96]})
    assert mapped["wide.png"] == (96, 64)
    assert mapped["tall.png"] == computed["tall.png"] and mapped["square.png"] == computed["square.png"]


def test_the_map_may_be_a_json_file_in_simpletuners_format(tmp_path):
    (tmp_path / "aspect_ratio_map-64.json").write_text(json.dumps({"0.67": [48, 80], "1.0": [48, 48]}))
    mapped = _buckets(tmp_path, aspect_resolution_map=str(tmp_path / "aspect_ratio_map-64.json"))
    assert mapped["tall.png"] == (48, 80)  # 64/96 = 0.666..., looked up as 0.67
    assert mapped["square.png"] == (48, 48)


def test_square_crops_keep_the_resolution(tmp_path):
    mapped = _buckets(tmp_path, crop=True, crop_aspect="square", aspect_resolution_map={"1.0": [48, 48]})
    assert set(mapped.values()) == {(64, 64)}


def test_changing_the_map_is_a_settings_change(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    _buckets(tmp_path, aspect_resolution_map={"1.5": [96, 64]})
    _buckets(tmp_path, aspect_resolution_map={"1.5": [96, 64]})
    assert "settings changed" not in caplog.text  # the saved map reads back equal
    _buckets(tmp_path, aspect_resolution_map={"1.5": [112, 64]})
    assert "aspect_resolution_map: [[1.5, [96, 64]]] -> [[1.5, [112, 64]]]" in caplog.text


@pytest.mark.parametrize("value, expected", [
    ({"1.5": [90, 64]}, "entry '1.5' = [90, 64] is not a multiple of aspect_bucket_alignment 16"),
    ({"wide": [96, 64]}, "has the entry 'wide'; its keys must be aspect ratios"),
    ({"1.5": [96]}, "entry '1.5' must be [width, height] in whole pixels"),
    ({"1.5": [96.5, 64]}, "entry '1.5' must be [width, height] in whole pixels"),
    ("missing.json", "'missing.json': no such file"),
    ([1, 2], "must be an object like"),
])
def test_bad_maps_name_the_dataset_and_the_entry(tmp_path, value, expected):
    with pytest.raises(ConfigError) as error:
        _buckets(tmp_path, aspect_resolution_map=value)
    message = str(error.value)
    assert message.startswith("dataset 'pics': key 'aspect_resolution_map'") and expected in message
    assert "\n" not in message


def test_a_map_file_that_is_not_json(tmp_path):
    (tmp_path / "map.json").write_text("{1.5: [96, 64]}")
    with pytest.raises(ConfigError, match=r"is not valid JSON \(line 1, column 2"):
        _buckets(tmp_path, aspect_resolution_map=str(tmp_path / "map.json"))
