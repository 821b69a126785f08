"""Bucket sizes, crop geometry and the pixels that carry it out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from simpletuner.data.buckets import bucket_for, plan_dataset, plan_sample
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.transforms import ImageDecodeError, load_pixels


def _dataset(**extra) -> DatasetConfig:
    values = dict(
        id="photos",
        instance_data_dir="/data",
        cache_dir_vae="/cache",
        text_embeds=None,
        caption_strategy="filename",
        instance_prompt=None,
        resolution=64,
        resolution_type="pixel_area",
        minimum_image_size=None,
        crop=False,
        crop_style="center",
        crop_aspect="square",
        repeats=0,
        probability=1.0,
        aspect_bucket_alignment=8,
    )
    values.update(extra)
    return DatasetConfig(**values)


def _record(width, height, name="img.png", path=None) -> ImageRecord:
    return ImageRecord(path=path or f"/data/{name}", relative_path=name, width=width, height=height,
                       size_bytes=1, mtime_ns=1, caption="c")


# --- bucket sizes ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "size, bucket",
    [((1216, 832), (1216, 832)), ((832, 1216), (832, 1216)), ((4000, 4000), (1024, 1024)),
     ((1920, 1080), (1344, 768))],
)
def test_pixel_area_buckets_at_1024(size, bucket):
    assert bucket_for(*size, _dataset(resolution=1024, aspect_bucket_alignment=64)) == bucket


def test_pixel_area_small_resolution_and_floor():
    dataset = _dataset(resolution=64, aspect_bucket_alignment=8)
    # a = 2: sqrt(4096*2) = 90.5 -> 88, sqrt(4096/2) = 45.25 -> 48
    assert bucket_for(96, 48, dataset) == (88, 48)
    assert bucket_for(48, 96, dataset) == (48, 88)
    # a = 100: height sqrt(40.96) = 6.4 rounds to 0 but never goes below R
    assert bucket_for(1000, 10, _dataset(aspect_bucket_alignment=16)) == (640, 16)


@pytest.mark.parametrize(
    "size, bucket",
    [((96, 48), (128, 64)), ((30, 90), (64, 192)), ((100, 70), (96, 64)), ((70, 70), (64, 64))],
)
def test_pixel_buckets_keep_shorter_edge(size, bucket):
    assert bucket_for(*size, _dataset(resolution_type="pixel", aspect_bucket_alignment=16)) == bucket


def test_crop_square_bucket_is_resolution_squared_for_both_types():
    for resolution_type in ("pixel", "pixel_area"):
        dataset = _dataset(crop=True, crop_aspect="square", resolution_type=resolution_type)
        assert bucket_for(300, 100, dataset) == (64, 64)


# --- geometry -----------------------------------------------------------------------------------

def test_crop_false_covers_bucket_and_trims_centre():
    dataset = _dataset(resolution_type="pixel", aspect_bucket_alignment=16, crop_style="corner")
    sample = plan_sample(_record(100, 70), dataset)
    assert sample.original_size == (70, 100)
    assert sample.target_size == (64, 96) and sample.bucket == (96, 64)
    assert sample.intermediate_size == (68, 96)  # 70 * 96/100 = 67.2, rounded up
    assert sample.crop_top_left == (2, 0)  # centred although crop_style says corner: crop is off


def test_crop_false_exact_fit_has_no_offset():
    sample = plan_sample(_record(200, 100), _dataset(resolution_type="pixel", aspect_bucket_alignment=16))
    assert sample.intermediate_size == (64, 128) and sample.crop_top_left == (0, 0)


@pytest.mark.parametrize("style, top_left", [("center", (0, 14)), ("corner", (0, 28))])
def test_square_crop_positions(style, top_left):
    dataset = _dataset(resolution_type="pixel", crop=True, crop_aspect="square", crop_style=style)
    sample = plan_sample(_record(100, 70), dataset)
    assert sample.intermediate_size == (64, 92)  # shorter edge 64, 100 * 64/70 = 91.4 rounded up
    assert sample.target_size == (64, 64)
    assert sample.crop_top_left == top_left


def test_square_crop_of_tall_image_moves_vertically():
    dataset = _dataset(crop=True, crop_aspect="square", crop_style="corner")
    sample = plan_sample(_record(70, 100), dataset)
    assert sample.intermediate_size == (92, 64) and sample.crop_top_left == (28, 0)


def test_random_crop_is_fixed_per_dataset_path_and_geometry():
    dataset = _dataset(resolution_type="pixel", crop=True, crop_aspect="square", crop_style="random")
    record = _record(400, 64, name="wide.png")  # 336 pixels of horizontal slack
    first = plan_sample(record, dataset)
    assert plan_sample(record, dataset) == first  # no run seed: every run finds the same crop
    # Another dataset id or another geometry (here a longer image) draws its own window.
    lefts = {plan_sample(record, _dataset(resolution_type="pixel", crop=True, crop_aspect="square",
                                          crop_style="random", id=f"set{i}")).crop_top_left[1] for i in range(20)}
    assert len(lefts) > 5 and all(0 <= left <= 336 for left in lefts)
    longer = {plan_sample(_record(400 + i, 64, name="wide.png"), dataset).crop_top_left[1] for i in range(20)}
    assert len(longer) > 5
    others = {plan_sample(_record(400, 64, name=f"{i}.png"), dataset).crop_top_left for i in range(10)}
    assert len(others) > 5
    assert all(top == 0 for top, _ in others)


def test_preserve_crop_places_window_by_style():
    dataset = _dataset(resolution_type="pixel", aspect_bucket_alignment=16, crop=True,
                       crop_aspect="preserve", crop_style="corner")
    sample = plan_sample(_record(100, 70), dataset)
    assert sample.target_size == (64, 96)
    assert sample.intermediate_size == (68, 96)
    assert sample.crop_top_left == (4, 0)


def test_minimum_image_size_by_resolution_type():
    pixel = _dataset(resolution_type="pixel", minimum_image_size=50)
    assert plan_sample(_record(100, 40), pixel) is None  # shorter edge 40 < 50
    assert plan_sample(_record(100, 50), pixel) is not None
    area = _dataset(resolution_type="pixel_area", minimum_image_size=50)
    assert plan_sample(_record(100, 40), area) is not None  # sqrt(4000) = 63 >= 50
    assert plan_sample(_record(40, 40), area) is None
    samples, skipped = plan_dataset([_record(100, 40, "a.png"), _record(40, 40, "b.png")], area)
    assert [s.record.relative_path for s in samples] == ["a.png"]
    assert skipped == {"below minimum_image_size": ["b.png"]}


# --- pixels -------------------------------------------------------------------------------------

def _gradient(width, height):
    x = np.arange(width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.arange(height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x * 2, y * 3, np.zeros_like(x)], axis=-1))


def _to_byte(value):
    return round((float(value) + 1.0) * 127.5)


def test_load_pixels_crops_at_planned_window(tmp_path):
    path = tmp_path / "grad.png"
    _gradient(92, 64).save(path)
    dataset = _dataset(resolution_type="pixel", crop=True, crop_aspect="square", crop_style="corner")
    sample = plan_sample(_record(92, 64, path=str(path)), dataset)
    assert sample.crop_top_left == (0, 28) and sample.intermediate_size == (64, 92)
    pixels = load_pixels(sample)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert _to_byte(pixels[0, 0, 0]) == 28 * 2  # first column is source column 28
    assert _to_byte(pixels[0, 0, 63]) == 91 * 2
    assert _to_byte(pixels[1, 10, 0]) == 30


def test_load_pixels_resizes_to_intermediate(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 140), (255, 0, 0)).save(path)
    sample = plan_sample(_record(200, 140, path=str(path)),
                         _dataset(resolution_type="pixel", aspect_bucket_alignment=16), 0)
    pixels = load_pixels(sample)
    assert pixels.shape == (3, 64, 96)
    assert torch.allclose(pixels[0], torch.ones(64, 96), atol=0.02)
    assert torch.allclose(pixels[1], -torch.ones(64, 96), atol=0.02)


def test_load_pixels_applies_exif_rotation(tmp_path):
    stored = Image.new("RGB", (80, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (40, 0, 80, 40))  # right half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    sample = plan_sample(_record(40, 80, path=str(path)), _dataset(resolution_type="pixel", resolution=40))
    assert sample.target_size == (80, 40)
    pixels = load_pixels(sample)
    assert pixels.shape == (3, 80, 40)
    assert pixels[0, 5, 20] > 0.8 and pixels[2, 5, 20] < -0.8  # top is the stored left: red
    assert pixels[2, 75, 20] > 0.8 and pixels[0, 75, 20] < -0.8  # bottom is blue


@pytest.mark.parametrize("kind", ["rgba", "palette_transparent", "cmyk", "grey16", "grey"])
def test_load_pixels_handles_odd_modes(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "rgba":
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
        image.save(path)
        expected = 1.0  # composited on white, not black
    elif kind == "palette_transparent":
        image = Image.new("P", (64, 64), 0)
        image.putpalette([0, 0, 0] * 256)
        image.save(path, transparency=0)
        expected = 1.0
    elif kind == "cmyk":
        path = tmp_path / "cmyk.jpg"
        Image.new("CMYK", (64, 64), (0, 0, 0, 0)).save(path)
        expected = 1.0  # no ink is white
    elif kind == "grey16":
        Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(path)
        expected = 0.0  # half of the 16-bit range, not clipped to white
    else:
        Image.new("L", (64, 64), 0).save(path)
        expected = -1.0
    sample = plan_sample(_record(64, 64, path=str(path)), _dataset())
    pixels = load_pixels(sample)
    assert pixels.shape == (3, 64, 64)
    assert abs(float(pixels.mean()) - expected) < 0.03


def test_truncated_image_raises_decode_error(tmp_path):
    path = tmp_path / "cut.png"
    _gradient(64, 64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    sample = plan_sample(_record(64, 64, path=str(path)), _dataset())
    with pytest.raises(ImageDecodeError, match="dataset 'photos'.*img.png"):
        load_pixels(sample)


def test_unaligned_resolution_is_rounded_to_the_bucket_multiple():
    square = _dataset(resolution=100, aspect_bucket_alignment=16, crop=True, crop_aspect="square")
    sample = plan_sample(_record(300, 200), square)
    assert sample.target_size == (96, 96) and sample.intermediate_size == (96, 144)
    pixel = _dataset(resolution=100, aspect_bucket_alignment=16, resolution_type="pixel")
    assert bucket_for(200, 100, pixel) == (192, 96)
