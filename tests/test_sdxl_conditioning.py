"""SDXL's micro-conditioning describes what really happened to each image's pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from simpletuner.data.buckets import plan_sample
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.data.transforms import load_pixels
from simpletuner.families.sdxl import SDXLFamily

DEFAULTS = {
    "resolution": 64, "resolution_type": "pixel_area", "crop": False, "crop_style": "random",
    "crop_aspect": "square", "caption_strategy": "textfile", "minimum_image_size": None,
    "aspect_bucket_alignment": 16,
}


def _dataset(tmp_path: Path, **keys):
    entries = [
        {"id": "pics", "type": "local", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "c"), **keys},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")},
    ]
    return parse_data_backend_config(entries, DEFAULTS).image_datasets[0]


def _striped_image(tmp_path: Path, width: int, height: int) -> ImageRecord:
    """Each column's red channel encodes its x coordinate, so crops are visible in pixels."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 2, y * 2, 0) for y in range(height) for x in range(width)])
    path = tmp_path / f"stripes_{width}x{height}.png"
    image.save(path)
    stat = path.stat()
    return ImageRecord(str(path), path.name, width, height, stat.st_size, stat.st_mtime_ns, "stripes")


def test_center_crop_time_ids_name_the_real_crop(tmp_path: Path) -> None:
    record = _striped_image(tmp_path, 96, 64)
    sample = plan_sample(record, _dataset(tmp_path, crop=True, crop_style="center"))
    time_ids = SDXLFamily().sample_conditioning([sample])["time_ids"]
    # 96x64 with square crops at 64: shorter edge already 64, window centred: left = (96-64)/2.
    assert time_ids.tolist() == [[64, 96, 0, 16, 64, 64]]
    pixels = load_pixels(sample)
    red_of_first_column = (pixels[0, 0, 0].item() + 1) / 2 * 255
    assert red_of_first_column == pytest.approx(16 * 2, abs=1.0), "pixels were not cropped where time_ids say"


def test_corner_crop_takes_the_lowest_right_window(tmp_path: Path) -> None:
    record = _striped_image(tmp_path, 64, 96)
    sample = plan_sample(record, _dataset(tmp_path, crop=True, crop_style="corner"))
    assert SDXLFamily().sample_conditioning([sample])["time_ids"].tolist() == [[96, 64, 32, 0, 64, 64]]


def test_uncropped_bucket_records_the_resize_and_trim(tmp_path: Path) -> None:
    record = _striped_image(tmp_path, 96, 64)
    sample = plan_sample(record, _dataset(tmp_path, crop=False))
    # pixel_area at 64 (area 4096) for aspect 1.5 gives an 80x48 bucket; covering it
    # scales 96x64 by 5/6 to 80x54 (rounded up), trimming 6 rows centred: top = 3.
    assert sample.target_size == (48, 80) and sample.intermediate_size == (54, 80)
    time_ids = SDXLFamily().sample_conditioning([sample])["time_ids"]
    assert time_ids.tolist() == [[64, 96, 3, 0, 48, 80]]
    assert tuple(load_pixels(sample).shape) == (3, 48, 80)


def test_batch_rows_follow_sample_order(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, crop=True, crop_style="center")
    samples = [plan_sample(_striped_image(tmp_path, w, h), dataset) for w, h in ((96, 64), (64, 96))]
    rows = SDXLFamily().sample_conditioning(samples)["time_ids"]
    assert rows.dtype == torch.float32 and rows[:, 2:4].tolist() == [[0, 16], [16, 0]]
