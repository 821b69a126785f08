"""Crop aspects from crop_aspect_buckets, downsample-before-crop, face crops, aspect filters, rounding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from simpletuner.data.buckets import bucket_for, crop_aspect_for, plan_dataset, plan_sample
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig, parse_data_backend_config
from simpletuner.errors import ConfigError


def _dataset(**extra) -> DatasetConfig:
    values = dict(
        id="photos", instance_data_dir="/data", cache_dir_vae="/cache", text_embeds=None,
        caption_strategy="filename", instance_prompt=None, resolution=64, resolution_type="pixel_area",
        minimum_image_size=None, crop=True, crop_style="center", crop_aspect="square", repeats=0,
        probability=1.0, aspect_bucket_alignment=8,
    )
    values.update(extra)
    return DatasetConfig(**values)


def _record(width, height, name="img.png", path=None) -> ImageRecord:
    return ImageRecord(path=path or f"/data/{name}", relative_path=name, width=width, height=height,
                       size_bytes=1, mtime_ns=1, caption="c")


# --- crop_aspect closest / random ------------------------------------------------------------------

def test_closest_crop_aspect_picks_the_nearest_ratio():
    dataset = _dataset(crop_aspect="closest", crop_aspect_buckets=(0.75, 1.0, 1.5))
    assert crop_aspect_for(160, 100, dataset) == 1.5  # 1.6 is nearest 1.5
    assert crop_aspect_for(100, 120, dataset) == 0.75  # 0.83: |log| nearer 0.75 than 1.0
    assert crop_aspect_for(300, 100, dataset) == 1.5  # beyond the list: its widest
    sample = plan_sample(_record(160, 100), dataset)
    w, h = sample.bucket
    assert (w, h) == bucket_for(150, 100, _dataset(crop=False))  # the 1.5 bucket at 64² area
    assert sample.intermediate_size[0] >= h and sample.intermediate_size[1] >= w


def test_random_crop_aspect_is_per_image_deterministic_and_keeps_half():
    ratios = (0.5, 1.0, 1.5, 3.0)
    dataset = _dataset(crop_aspect="random", crop_aspect_buckets=ratios)
    chosen = {crop_aspect_for(100, 100, dataset, f"{i}.png") for i in range(40)}
    assert chosen == {0.5, 1.0, 1.5}  # 3.0 would keep only a third of a square image
    assert crop_aspect_for(100, 100, dataset, "x.png") == crop_aspect_for(100, 100, dataset, "x.png")
    sizes = {crop_aspect_for(100 + i, 100, dataset, "x.png") for i in range(30)}
    assert len(sizes) > 1  # the draw follows the image's size (and path), not the run's seed
    assert crop_aspect_for(1000, 100, _dataset(crop_aspect="random", crop_aspect_buckets=(0.5, 1.0)), "w") == 1.0


def test_crop_aspect_buckets_are_required_and_validated(tmp_path):
    def load(**keys):
        entries = [{"id": "p", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "c"),
                    "crop": True, **keys},
                   {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}]
        return parse_data_backend_config(entries, {}).image_datasets[0]

    with pytest.raises(ConfigError, match="crop_aspect 'closest' chooses from 'crop_aspect_buckets'"):
        load(crop_aspect="closest")
    with pytest.raises(ConfigError, match="list of numbers"):
        load(crop_aspect="random", crop_aspect_buckets=["wide"])
    assert load(crop_aspect="random", crop_aspect_buckets="1.5, 0.75").crop_aspect_buckets == (0.75, 1.5)
    globally = parse_data_backend_config(
        [{"id": "p", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "c")},
         {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}],
        {"crop": True, "crop_aspect": "closest", "crop_aspect_buckets": ["1.0", "2.0"]},
    ).image_datasets[0]
    assert globally.crop_aspect_buckets == (1.0, 2.0)


# --- maximum_image_size / target_downsample_size ---------------------------------------------------

def test_large_images_are_downsampled_before_cropping():
    plain = _dataset(resolution=64, crop_style="corner")
    shrink = _dataset(resolution=64, crop_style="corner", maximum_image_size=200, target_downsample_size=128)
    big = _record(400, 400)
    assert plan_sample(big, plain).intermediate_size == (64, 64)  # the whole image, scaled to the window
    sample = plan_sample(big, shrink)
    assert sample.intermediate_size == (128, 128) and sample.target_size == (64, 64)
    assert sample.crop_top_left == (64, 64)  # the window now holds a quarter of the scene
    small = _record(180, 180)  # sqrt(area) 180 <= 200: untouched
    assert plan_sample(small, shrink).intermediate_size == plan_sample(small, plain).intermediate_size
    # The downsample never goes below what the bucket needs.
    tiny_target = _dataset(resolution=64, maximum_image_size=100, target_downsample_size=32)
    assert plan_sample(big, tiny_target).intermediate_size == (64, 64)
    # pixel: the measure is the shorter edge.
    pixel = _dataset(resolution_type="pixel", maximum_image_size=200, target_downsample_size=100)
    assert plan_sample(_record(600, 300), pixel).intermediate_size == (100, 200)
    assert plan_sample(big, _dataset(crop=False, maximum_image_size=200, target_downsample_size=128),
                       0).intermediate_size == (64, 64)  # without crop there is nothing to gain


def test_downsample_keys_work_together(tmp_path):
    def load(**keys):
        entries = [{"id": "p", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "c"), **keys},
                   {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}]
        return parse_data_backend_config(entries, {})

    with pytest.raises(ConfigError, match="set both or neither"):
        load(maximum_image_size=2048)
    with pytest.raises(ConfigError, match="larger than 'maximum_image_size'"):
        load(maximum_image_size=1024, target_downsample_size=2048)


# --- aspect filters and rounding -----------------------------------------------------------------------

def test_aspect_ratio_filters():
    dataset = _dataset(crop=False, minimum_aspect_ratio=0.5, maximum_aspect_ratio=2.0)
    records = [_record(100, 100, "square.png"), _record(300, 100, "wide.png"), _record(100, 300, "tall.png"),
               _record(200, 100, "edge.png")]
    samples, skipped = plan_dataset(records, dataset)
    assert [s.record.relative_path for s in samples] == ["square.png", "edge.png"]
    assert skipped == {"aspect above maximum_aspect_ratio": ["wide.png"],
                       "aspect below minimum_aspect_ratio": ["tall.png"]}


def test_aspect_bucket_rounding_merges_near_aspects():
    exact = _dataset(crop=False, resolution=1024, aspect_bucket_alignment=8)
    rounded = _dataset(crop=False, resolution=1024, aspect_bucket_alignment=8, aspect_bucket_rounding=1)
    sizes = [(1000, 700), (1000, 690), (1000, 710)]  # aspects 1.43, 1.45, 1.41
    assert len({bucket_for(w, h, exact) for w, h in sizes}) == 3
    assert {bucket_for(w, h, rounded) for w, h in sizes} == {bucket_for(14, 10, exact)}


# --- face crops ----------------------------------------------------------------------------------------

def _draw_face(width, height, cx, cy, size):
    import cv2

    image = np.full((height, width), 120, np.uint8)
    cv2.ellipse(image, (cx, cy), (int(size * 0.8), size), 0, 0, 360, 200, -1)
    cv2.ellipse(image, (cx, cy - int(size * 0.95)), (int(size * 0.85), int(size * 0.35)), 0, 0, 360, 60, -1)
    for side in (-1, 1):
        cv2.ellipse(image, (cx + side * int(size * 0.35), cy - int(size * 0.25)),
                    (int(size * 0.2), int(size * 0.1)), 0, 0, 360, 40, -1)
        cv2.ellipse(image, (cx + side * int(size * 0.35), cy - int(size * 0.45)),
                    (int(size * 0.22), int(size * 0.05)), 0, 0, 360, 70, -1)
    cv2.ellipse(image, (cx, cy + int(size * 0.15)), (int(size * 0.08), int(size * 0.2)), 0, 0, 360, 170, -1)
    cv2.ellipse(image, (cx, cy + int(size * 0.5)), (int(size * 0.3), int(size * 0.08)), 0, 0, 360, 60, -1)
    return Image.fromarray(cv2.GaussianBlur(image, (5, 5), 0)).convert("RGB")


def test_face_detection_finds_the_face(tmp_path):
    from simpletuner.data.faces import detect_face

    _draw_face(600, 400, 480, 200, 70).save(tmp_path / "face.jpg", quality=95)
    Image.new("RGB", (600, 400), (120, 120, 120)).save(tmp_path / "blank.png")
    x, y = detect_face(str(tmp_path / "face.jpg"))
    assert x == pytest.approx(0.8, abs=0.03) and y == pytest.approx(0.5, abs=0.05)
    assert detect_face(str(tmp_path / "blank.png")) is None


def test_face_crop_centres_the_window_on_the_face_and_caches(tmp_path):
    from simpletuner.data import faces
    from simpletuner.data.discovery import discover
    from simpletuner.data.pipeline import prepare_training_data

    images = tmp_path / "images"
    images.mkdir()
    _draw_face(600, 400, 480, 200, 70).save(images / "face.png")
    Image.new("RGB", (600, 400), (90, 90, 90)).save(images / "blank.png")
    backends = parse_data_backend_config(
        [{"id": "p", "instance_data_dir": str(images), "cache_dir_vae": str(tmp_path / "vae"),
          "caption_strategy": "filename", "resolution": 128, "aspect_bucket_alignment": 16, "crop": True,
          "crop_style": "face", "crop_aspect": "square"},
         {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}], {})

    class Config:
        train_batch_size = 1

    data = prepare_training_data(Config, backends, show_progress=False)
    by_name = {s.record.relative_path: s for s in data.samples["p"]}
    face, blank = by_name["face.png"], by_name["blank.png"]
    assert face.intermediate_size == (128, 192)  # shorter edge 128
    # Face centre at x = 0.8 * 192 = 154; a 128 window centred there would pass the right edge, so it stops.
    assert face.crop_top_left == (0, 64)
    assert blank.crop_top_left == (0, 32)  # no face: centred
    saved = json.loads((tmp_path / "vae" / faces.FACES_FILE).read_text())["files"]
    assert len(saved["face.png"]) == 4 and len(saved["blank.png"]) == 2
    calls = []
    original = faces.detect_face
    faces.detect_face = lambda path: calls.append(path) or original(path)
    try:
        records = discover(backends.image_datasets[0], progress=False).records
        faces.face_focus(records, backends.image_datasets[0], progress=False)
    finally:
        faces.detect_face = original
    assert calls == []  # unchanged files are not examined again


def test_face_crop_window_contains_the_face_in_pixels(tmp_path):
    from simpletuner.data.faces import detect_face
    from simpletuner.data.transforms import load_image

    path = tmp_path / "left_face.png"
    _draw_face(500, 300, 110, 150, 60).save(path)
    dataset = _dataset(resolution=128, aspect_bucket_alignment=16, crop_style="face")
    focus = detect_face(str(path))
    sample = plan_sample(_record(500, 300, "left_face.png", path=str(path)), dataset, focus)
    top, left = sample.crop_top_left
    inter_w = sample.intermediate_size[1]
    assert left == max(0, math.floor(focus[0] * inter_w - 64 + 0.5))
    window = np.asarray(load_image(sample).convert("L"), dtype=np.float32)
    assert window.max() > 180  # the bright face is inside the crop (the background is 120)
