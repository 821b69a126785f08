"""discovery.json at scale: a small change writes a small delta, and what earlier versions saved stays valid.

Datasets here are hard links to one small PNG (a directory entry each, no
image to encode), so a test holds the 5,000 files a delta needs (below
``DELTA_MIN_BASE`` the manifest is always rewritten whole) in well under a
second of set-up.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from simpletuner.caching.keys import latent_key, text_key
from simpletuner.data import discovery as discovery_module
from simpletuner.data.buckets import plan_dataset
from simpletuner.data.discovery import discover, mark_undecodable
from simpletuner.data.manifest import DELTA_FILE, DELTA_MAX_FRACTION, DELTA_MIN_BASE, DISCOVERY_FILE
from simpletuner.data.schema import DatasetConfig

BASE_FILES = 5000


def _dataset(root: Path, captions: str = "filename") -> DatasetConfig:
    return DatasetConfig(
        id="many", instance_data_dir=str(root / "images"), cache_dir_vae=str(root / "cache"), text_embeds=None,
        caption_strategy=captions, instance_prompt=None, resolution=64, resolution_type="pixel_area",
        minimum_image_size=None, crop=False, crop_style="center", crop_aspect="square", repeats=0,
        probability=1.0, aspect_bucket_alignment=8,
    )


def _link(root: Path, start: int, count: int, folder: str = "base") -> None:
    template = root / "template.png"
    if not template.exists():
        Image.new("RGB", (48, 32), (10, 20, 30)).save(template)
    target = root / "images" / folder
    target.mkdir(parents=True, exist_ok=True)
    for index in range(start, start + count):
        os.link(template, target / f"photo {index:05d}.png")


class Reads:
    def __init__(self):
        self.paths: list[str] = []

    def __call__(self, path):
        self.paths.append(path)
        return discovery_module.read_image_size(path)


def _state(path: Path):
    return (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None


def _delta(cache: Path) -> dict:
    return json.loads((cache / DELTA_FILE).read_text())["files"]


def test_one_percent_new_files_write_a_delta_of_one_percent(tmp_path):
    assert BASE_FILES >= DELTA_MIN_BASE
    _link(tmp_path, 0, BASE_FILES)
    dataset, cache = _dataset(tmp_path), tmp_path / "cache"
    cold = discover(dataset, progress=False)
    assert len(cold.records) == BASE_FILES and not (cache / DELTA_FILE).exists()
    base = _state(cache / DISCOVERY_FILE)

    _link(tmp_path, BASE_FILES, 50, folder="new")
    reads = Reads()
    grown = discover(dataset, progress=False, reader=reads)
    assert len(reads.paths) == 50 and len(grown.records) == BASE_FILES + 50
    assert _state(cache / DISCOVERY_FILE) == base  # the base is not rewritten...
    delta = _delta(cache)
    assert sorted(delta) == sorted(f"new/photo {i:05d}.png" for i in range(BASE_FILES, BASE_FILES + 50))
    # ...and what is written is about 1% of it (each delta entry is a base entry's size, give or take)
    assert (cache / DELTA_FILE).stat().st_size < len(base[1]) * 0.015

    unchanged = _state(cache / DELTA_FILE)
    again = Reads()
    rescanned = discover(dataset, progress=False, reader=again)
    assert again.paths == [] and rescanned.records == grown.records
    assert _state(cache / DELTA_FILE) == unchanged and _state(cache / DISCOVERY_FILE) == base

    for index in range(10):  # removed files: recorded as null in the delta, gone after a reload
        os.unlink(tmp_path / "images" / "base" / f"photo {index:05d}.png")
    shrunk = discover(dataset, progress=False)
    assert len(shrunk.records) == BASE_FILES + 40
    assert [name for name, entry in _delta(cache).items() if entry is None] == [
        f"base/photo {i:05d}.png" for i in range(10)]
    assert _state(cache / DISCOVERY_FILE) == base
    reads = Reads()
    assert discover(dataset, progress=False, reader=reads).records == shrunk.records and reads.paths == []


def test_a_delta_past_an_eighth_of_the_base_is_compacted_into_it(tmp_path):
    _link(tmp_path, 0, BASE_FILES)
    dataset, cache = _dataset(tmp_path), tmp_path / "cache"
    discover(dataset, progress=False)
    _link(tmp_path, BASE_FILES, 100, folder="first")
    discover(dataset, progress=False)
    assert len(_delta(cache)) == 100

    more = BASE_FILES // DELTA_MAX_FRACTION  # with the 100 above, past an eighth of the base
    _link(tmp_path, BASE_FILES + 100, more, folder="second")
    found = discover(dataset, progress=False)
    assert not (cache / DELTA_FILE).exists()
    saved = json.loads((cache / DISCOVERY_FILE).read_text())["files"]
    assert sorted(saved) == sorted(r.relative_path for r in found.records)
    reads = Reads()
    assert discover(dataset, progress=False, reader=reads).records == found.records and reads.paths == []


def test_undecodable_marks_go_to_the_delta_and_hold(tmp_path):
    _link(tmp_path, 0, BASE_FILES)
    dataset, cache = _dataset(tmp_path), tmp_path / "cache"
    discover(dataset, progress=False)
    base = _state(cache / DISCOVERY_FILE)
    mark_undecodable(dataset, ["base/photo 00007.png"])
    assert _state(cache / DISCOVERY_FILE) == base and list(_delta(cache)) == ["base/photo 00007.png"]
    found = discover(dataset, progress=False)
    assert found.skipped == {discovery_module.REASON_UNDECODABLE: ["base/photo 00007.png"]}


def test_a_manifest_and_cache_keys_from_before_stay_valid(tmp_path):
    """discovery.json as the previous version wrote it is read as is, and cache keys are unchanged.

    The key literals were computed by the code before records stopped keeping
    absolute paths: a latent cache made then is still complete now.
    """
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    image = folder / "a red_square-0042.png"
    Image.new("RGB", (96, 64), (200, 10, 10)).save(image)
    with open(image, "ab") as handle:
        handle.write(b"\0" * (4000 - image.stat().st_size))
    os.utime(image, ns=(1_700_000_000_123_456_789,) * 2)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / DISCOVERY_FILE).write_text(
        '{"version":2,"files":{"sub/a red_square-0042.png":[4000,1700000000123456789,96,64]}}')
    reads = Reads()
    dataset = _dataset(tmp_path)
    found = discover(dataset, progress=False, reader=reads)
    assert reads.paths == []  # sizes came from the old manifest
    samples, _ = plan_dataset(found.records, dataset)
    (sample,) = samples
    assert sample.record.path == str(image)
    assert latent_key(sample, "vae-id", "norm") == "900fba93d150d6f55a5f06df9ce4bb4aeb75ce71"
    assert text_key(sample.caption, "enc") == "8daafa27b7f4643dc9fd3cb74a1ba217d4529f83"


def test_records_do_not_hold_an_absolute_path_each(tmp_path):
    """Memory held by a discovery result per image, counted by tracemalloc (not RSS, which is noisy).

    Each record holds its relative path ("base/photo 01234.png"), its packed
    size and mtime, and itself; the dataset's root (under pytest's long
    tmp_path) is shared.  A record keeping its absolute path would add that
    path (about 110 bytes here) to every image.
    """
    _link(tmp_path, 0, 2000)
    dataset = _dataset(tmp_path)
    discover(dataset, progress=False)  # the manifest exists: the measured run is a re-scan
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        found = discover(dataset, progress=False)
        held = (tracemalloc.get_traced_memory()[0] - before) / len(found.records)
    finally:
        tracemalloc.stop()
    assert len(str(tmp_path)) > 40
    # record 80 + relative path 70 + packed version 40 + list slot 8 = ~200, captions shared
    assert held < 230, held


def test_a_timestamp_past_2262_is_kept_exact(tmp_path):
    """64 bits of nanoseconds end in 2262; a damaged file system can still hand out later mtimes."""
    _link(tmp_path, 0, 3)
    odd = tmp_path / "images" / "base" / "photo 00001.png"
    os.unlink(odd)
    Image.new("RGB", (16, 8)).save(odd)  # its own inode: the others keep their mtime
    late = 10_500_000_000 * 10**9  # the year 2302
    os.utime(odd, ns=(late, late))
    if odd.stat().st_mtime_ns < 1 << 63:
        pytest.skip("this file system cannot store a timestamp past 2262")
    dataset = _dataset(tmp_path)
    found = {r.relative_path: r for r in discover(dataset, progress=False).records}
    record = found["base/photo 00001.png"]
    assert record.mtime_ns == odd.stat().st_mtime_ns and record.size_bytes == odd.stat().st_size
    assert found["base/photo 00000.png"].mtime_ns == (tmp_path / "template.png").stat().st_mtime_ns
    reads = Reads()
    assert discover(dataset, progress=False, reader=reads).records == list(found.values()) and reads.paths == []
