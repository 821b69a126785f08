"""Bad data never stops a run: a folder of every kind of broken or odd file.

Each kind is either handled (converted, rotated, found) or skipped with a
reason in the discovery summary; nothing raises; every image discovery
accepts loads to pixels; a real (tiny) training run goes through.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simpletuner.data.buckets import plan_dataset
from simpletuner.data.discovery import DISCOVERY_FILE, discover, shown
from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import DatasetConfig, parse_data_backend_config
from simpletuner.data.transforms import load_pixels

REPO = Path(__file__).resolve().parents[1]
UNDECODABLE_NAME = os.fsdecode(b"caf\xe9_latin1_name.png")  # not valid UTF-8 on disk


def _noise(width, height, mode="RGB"):
    rng = np.random.default_rng(width * 1000 + height)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _caption(path: Path, text="a test image"):
    path.with_suffix(".txt").write_text(text, encoding="utf-8")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side=30000):
    """A PNG whose header claims side x side pixels (far past PIL's guard); tiny on disk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _truncate(path: Path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def build_bad_folder(root: Path) -> dict:
    """Write the bad-data set; returns {relative path: expected outcome} ('ok' or a skip reason)."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}

    def image(name, outcome="ok", caption="a test image", **save):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save.pop("_image", _noise(64, 48)).save(path, **save) if "_image" in save else _noise(64, 48).save(path, **save)
        if caption is not None:
            _caption(path, caption)
        expected[name] = outcome
        return path

    image("plain.jpg", quality=90)
    image("upper_case_extension.JPG", format="JPEG")
    _truncate(image("truncated.jpg", "truncated or corrupt", quality=95))
    _truncate(image("truncated.png", "truncated or corrupt"))
    _truncate(image("truncated.webp", "truncated or corrupt", format="WEBP", lossless=True))
    (root / "zero_bytes.jpg").write_bytes(b"")
    _caption(root / "zero_bytes.jpg")
    expected["zero_bytes.jpg"] = "empty file"
    (root / "not_an_image.png").write_text("I am a text file with a .png name")
    _caption(root / "not_an_image.png")
    expected["not_an_image.png"] = "not an image"
    image("cmyk.jpg", _image=_noise(64, 48, "CMYK"), format="JPEG")
    sixteen = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16))
    image("grey_16bit.png", _image=sixteen)
    palette = Image.new("P", (64, 48), 0)  # index 0 (black in the palette) is the transparent one
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (32, 0, 64, 48))
    image("palette_transparent.png", _image=palette, transparency=0)
    image("grey_alpha.png", _image=_noise(64, 48, "LA"))
    image("rgba.png", _image=_noise(64, 48, "RGBA"))
    exif = Image.Exif()
    exif[0x0112] = 6
    image("exif_rotated.jpg", exif=exif.tobytes())
    image("broken_exif.jpg", exif=b"Exif\x00\x00MM\x00*garbage")
    image("tiny.png", "below minimum_image_size", _image=_noise(12, 12))
    _bomb_png(root / "bomb.png")
    _caption(root / "bomb.png")
    expected["bomb.png"] = "too large (decompression bomb guard)"
    image("no_caption.png", "no caption", caption=None)
    latin = image("latin1_caption.png", "caption not UTF-8", caption=None)
    latin.with_suffix(".txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    image("blank_caption.png", "empty caption", caption="  \n\t ")
    image("café_ünïcode_猫.png")
    image(UNDECODABLE_NAME)
    image(".hidden_file.png", "hidden file")
    image(".hidden_folder/inside.png", None)  # never entered: not counted as a file
    image("album.jpg/inside_a_folder_named_like_an_image.png")
    os.symlink("loop_b.png", root / "loop_a.png")
    os.symlink("loop_a.png", root / "loop_b.png")
    expected["loop_a.png"] = expected["loop_b.png"] = "broken or looping link"
    os.symlink("does_not_exist.png", root / "dangling.png")
    expected["dangling.png"] = "broken or looping link"
    os.symlink(".", root / "folder_loop")  # a folder link back to the dataset itself
    os.symlink("plain.jpg", root / "linked_copy.jpg")
    _caption(root / "linked_copy.jpg")
    expected["linked_copy.jpg"] = "ok"
    (root / "notes.md").write_text("not an image extension: ignored, not counted")
    return {k: v for k, v in expected.items() if v is not None}


def _dataset(root: Path, **extra) -> DatasetConfig:
    values = dict(
        id="bad", instance_data_dir=str(root / "images"), cache_dir_vae=str(root / "cache"), text_embeds=None,
        caption_strategy="textfile", instance_prompt=None, resolution=64, resolution_type="pixel_area",
        minimum_image_size=24, crop=False, crop_style="center", crop_aspect="square", repeats=0,
        probability=1.0, aspect_bucket_alignment=16,
    )
    values.update(extra)
    return DatasetConfig(**values)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    expected = build_bad_folder(root / "images")
    return root, expected


def test_every_kind_is_handled_or_skipped_with_its_reason(bad):
    root, expected = bad
    assert len(set(expected.values()) - {"ok"}) >= 10 and len(expected) >= 25
    dataset = _dataset(root)
    found = discover(dataset, progress=False)
    samples, planning = plan_dataset(found.records, dataset)
    found.filter_out(planning)
    outcome = {r.relative_path: "ok" for r in found.records}
    for reason, paths in found.skipped.items():
        outcome.update({p: reason for p in paths})
    assert outcome == expected
    assert found.files_found == len(expected) == len(found.records) + found.skipped_count
    assert found.hidden_folders == [".hidden_folder/"]
    assert found.folders_skipped == {"folder link loop": ["folder_loop/"]}
    summary = found.summary()
    assert "truncated or corrupt: 3" in summary and "hidden folders not scanned: 1" in summary
    summary.encode("utf-8")  # printable: never a UnicodeEncodeError in a log handler
    assert shown(UNDECODABLE_NAME) == "caf\\xe9_latin1_name.png"
    rotated = next(r for r in found.records if r.relative_path == "exif_rotated.jpg")
    assert (rotated.width, rotated.height) == (48, 64)


def test_every_accepted_image_loads_to_finite_pixels(bad):
    root, _ = bad
    dataset = _dataset(root, cache_dir_vae=str(root / "cache_pixels"))
    found = discover(dataset, progress=False)
    samples, _ = plan_dataset(found.records, dataset)
    assert len(samples) >= 12
    for sample in samples:
        pixels = load_pixels(sample)
        assert pixels.shape == (3, *sample.target_size)
        assert torch.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1
    by_name = {s.record.relative_path: s for s in samples}
    transparent = load_pixels(by_name["palette_transparent.png"])
    assert transparent[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparent pixels become white
    grey16 = load_pixels(by_name["grey_16bit.png"])
    assert grey16.max() > 0.5 and grey16.min() < -0.5  # scaled, not clipped to white


def test_second_run_reads_no_header_and_reports_the_same(bad):
    root, _ = bad
    dataset = _dataset(root, cache_dir_vae=str(root / "cache_twice"))
    first = discover(dataset, progress=False)
    again = discover(dataset, progress=False)
    assert again.header_reads == 0 and again.records == first.records and again.skipped == first.skipped
    cached = json.loads((root / "cache_twice" / DISCOVERY_FILE).read_text())["files"]
    assert cached["truncated.jpg"][2] == "truncated or corrupt"


def test_pipeline_summary_table_names_files_reasons_buckets_and_steps(bad, tmp_path):
    root, _ = bad
    backends = parse_data_backend_config(
        [{"id": "bad", "instance_data_dir": str(root / "images"), "cache_dir_vae": str(tmp_path / "vae"),
          "caption_strategy": "textfile", "resolution": 64, "minimum_image_size": 24,
          "aspect_bucket_alignment": 16},
         {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": str(tmp_path / "text")}],
        {},
    )

    class Config:
        train_batch_size = 2
        data_backend_sampling = "auto-weighting"

    data = prepare_training_data(Config, backends, show_progress=False)
    table = data.table()
    usable = len(data.samples["bad"])
    assert f"image files found, {usable} usable" in table
    assert "below minimum_image_size: 1 (tiny.png)" in table
    assert "not an image: 1 (not_an_image.png)" in table
    assert f"{data.report.batches_per_epoch} steps per epoch" in table
    assert data.report.batches_per_epoch == len(list(data.sampler(seed=0)))


def test_an_image_that_fails_later_is_excluded_and_remembered(bad, tmp_path):
    root, _ = bad
    backends = parse_data_backend_config(
        [{"id": "bad", "instance_data_dir": str(root / "images"), "cache_dir_vae": str(tmp_path / "vae"),
          "caption_strategy": "textfile", "resolution": 64, "minimum_image_size": 24, "crop": True,
          "aspect_bucket_alignment": 16},
         {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": str(tmp_path / "text")}],
        {},
    )

    class Config:
        train_batch_size = 1

    data = prepare_training_data(Config, backends, show_progress=False)
    before = data.report.batches_per_epoch
    report = data.exclude({"bad": ["plain.jpg"]})
    assert report.batches_per_epoch == before - 1 == data.report.batches_per_epoch
    assert "plain.jpg" not in {s.record.relative_path for s in data.samples["bad"]}
    assert "cannot be decoded: 1 (plain.jpg)" in data.table()
    again = discover(backends.image_datasets[0], progress=False)
    assert again.skipped["cannot be decoded"] == ["plain.jpg"]


@pytest.mark.slow
def test_a_training_run_goes_through_the_bad_folder(bad, tmp_path, tiny_sdxl):
    root, _ = bad
    backend = tmp_path / "multidatabackend.json"
    backend.write_text(json.dumps([
        {"id": "bad", "instance_data_dir": str(root / "images"), "cache_dir_vae": str(tmp_path / "vae"),
         "caption_strategy": "textfile", "resolution": 64, "minimum_image_size": 24, "crop": True,
         "crop_aspect": "square", "aspect_bucket_alignment": 16},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": str(tmp_path / "text")},
    ]))
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl",
         "--pretrained_model_name_or_path", str(tiny_sdxl), "--data_backend_config", str(backend),
         "--output_dir", "out", "--max_train_steps", "2", "--train_batch_size", "2",
         "--mixed_precision", "no", "--seed", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    log = result.stdout + result.stderr
    assert "truncated or corrupt: 3" in log and "steps per epoch" in log
