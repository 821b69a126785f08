"""Start-up at scale: what an unchanged re-scan and the cache check may not do per image."""

from __future__ import annotations

import gc

from PIL import Image

from simpletuner.data import discovery as discovery_module
from simpletuner.data.discovery import discover
from simpletuner.data.schema import DatasetConfig


def _dataset(root) -> DatasetConfig:
    return DatasetConfig(
        id="photos", instance_data_dir=str(root / "images"), cache_dir_vae=str(root / "cache"), text_embeds=None,
        caption_strategy="filename", instance_prompt=None, resolution=64, resolution_type="pixel_area",
        minimum_image_size=None, crop=False, crop_style="center", crop_aspect="square", repeats=0,
        probability=1.0, aspect_bucket_alignment=8,
    )


def _images(folder, count, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(start, start + count):
        Image.new("RGB", (32 + index, 48), (index, 0, 0)).save(folder / f"photo {index}.png")


class Counting:
    """A header reader and a manifest writer that count their calls."""

    def __init__(self, monkeypatch):
        self.reads: list[str] = []
        self.writes = 0
        real_write = discovery_module.write_json

        def write_json(*args, **kwargs):
            self.writes += 1
            return real_write(*args, **kwargs)

        monkeypatch.setattr(discovery_module, "write_json", write_json)

    def __call__(self, path):
        self.reads.append(path)
        return discovery_module.read_image_size(path)


def test_unchanged_rescan_reads_no_header_and_writes_no_manifest(tmp_path, monkeypatch):
    _images(tmp_path / "images", 12)
    dataset = _dataset(tmp_path)
    first = Counting(monkeypatch)
    found = discover(dataset, progress=False, reader=first, workers=1)
    assert len(first.reads) == 12 and first.writes == 1

    again = Counting(monkeypatch)
    rescanned = discover(dataset, progress=False, reader=again, workers=1)
    assert again.reads == [] and again.writes == 0
    assert rescanned.records == found.records

    _images(tmp_path / "images", 1, start=12)
    grown = Counting(monkeypatch)
    result = discover(dataset, progress=False, reader=grown, workers=1)
    assert [p.rsplit("/", 1)[-1] for p in grown.reads] == ["photo 12.png"] and grown.writes == 1
    assert len(result.records) == 13


def test_discovery_pauses_the_collector_and_restores_it(tmp_path):
    _images(tmp_path / "images", 2)
    seen = []

    def reader(path):
        seen.append(gc.isenabled())
        return discovery_module.read_image_size(path)

    assert gc.isenabled()
    discover(_dataset(tmp_path), progress=False, reader=reader, workers=1)
    assert seen == [False, False] and gc.isenabled()
