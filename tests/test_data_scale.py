"""Start-up at scale: what an unchanged re-scan and the cache check may not do per image, and the table."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, s3_server, s3_server_session  # noqa: F401
from simpletuner.caching.latents import build_latent_cache, latent_keys
from simpletuner.caching.store import TensorStore
from simpletuner.data import discovery as discovery_module
from simpletuner.data import manifest as manifest_module
from simpletuner.data.discovery import discover
from simpletuner.data.records import ImageRecord, TrainingSample
from simpletuner.data.schema import DatasetConfig
from simpletuner.storage.local import LocalStorage


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
        real_write = manifest_module.write_json

        def write_json(*args, **kwargs):
            self.writes += 1
            return real_write(*args, **kwargs)

        monkeypatch.setattr(manifest_module, "write_json", write_json)

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


class CountingStorage(LocalStorage):
    """A local store that counts requests by kind."""

    def __init__(self, root):
        super().__init__(root)
        self.calls: Counter = Counter()

    def list(self, prefix=""):
        self.calls["list"] += 1
        return super().list(prefix)

    def exists(self, name):
        self.calls["exists"] += 1
        return super().exists(name)

    def read_head(self, name, count):
        self.calls["read_head"] += 1
        return super().read_head(name, count)

    def read(self, name):
        self.calls["read"] += 1
        return super().read(name)


def _cached_samples(tmp_path, count, writer=None):
    """``count`` samples over two buckets, every latent entry already stored (in ``writer``'s store)."""
    samples = []
    for index in range(count):
        size = (64, 64) if index % 2 else (64, 96)
        record = ImageRecord(f"/d/{index}.png", f"{index}.png", size[1], size[0], 100, 1, "a photo")
        samples.append(TrainingSample("d", record, size, size, (0, 0), size))
    keys = latent_keys(samples, "vae", "norm")
    writer = writer or TensorStore(tmp_path / "latents")
    for sample, key in zip(samples, keys):
        writer.save(key, {"latent": torch.zeros(4, sample.target_size[0] // 8, sample.target_size[1] // 8)})
    return samples, keys


def _no_vae():
    raise AssertionError("every entry is whole: the VAE must not load")


def test_cache_check_lists_once_instead_of_a_request_per_entry(tmp_path):
    samples, keys = _cached_samples(tmp_path, 40)
    storage = CountingStorage(tmp_path / "latents")
    report = build_latent_cache(samples, keys, TensorStore(storage), _no_vae, None, None, batch_size=4,
                                show_progress=False)
    assert report.reused == 40 and report.encoded == 0
    assert storage.calls["list"] == 1
    assert storage.calls["exists"] == 0 and storage.calls["read"] == 0
    assert storage.calls["read_head"] == 2  # one entry per bucket has its header checked


@pytest.mark.slow  # about a thousand uploads to the loopback S3 server
def test_cache_check_in_a_bucket_lists_pages_instead_of_a_request_per_entry(tmp_path, s3_server, monkeypatch):
    from simpletuner.storage.s3 import S3Settings, S3Storage

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    settings = S3Settings("dataset 'd'", "us-east-1", s3_server.url, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    store = TensorStore(settings.storage(s3_server.new_bucket(), "latents/", "cache_dir_vae"))
    samples, keys = _cached_samples(tmp_path, 1_100, writer=store)  # more than one page of 1,000
    requests: Counter = Counter()
    real_call = S3Storage._call

    def call(self, operation, name, **kwargs):
        requests[operation] += 1
        return real_call(self, operation, name, **kwargs)

    monkeypatch.setattr(S3Storage, "_call", call)
    report = build_latent_cache(samples, keys, store, _no_vae, None, None, batch_size=4, show_progress=False)
    assert report.reused == 1_100
    assert requests["list_objects_v2"] == 2  # two pages
    assert sum(requests.values()) - 2 == 2  # one header per bucket


def test_cache_check_still_finds_missing_and_truncated_entries(tmp_path):
    samples, keys = _cached_samples(tmp_path, 40)
    store = TensorStore(CountingStorage(tmp_path / "latents"))
    Path(store.path_for(keys[3])).unlink()
    truncated = Path(store.path_for(keys[8]))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    encoded = []

    def encode(vae, pixels, generators):
        encoded.append(len(pixels))
        return torch.zeros(len(pixels), 4, pixels.shape[-2] // 8, pixels.shape[-1] // 8)

    def pixels(sample):
        return torch.zeros(3, *sample.target_size)

    report = build_latent_cache(samples, keys, store, lambda: "vae", encode, pixels, batch_size=4,
                                show_progress=False)
    assert (report.reused, report.encoded, report.damaged) == (38, 2, 1)
    assert store.is_intact(keys[3]) and store.is_intact(keys[8])


def _forty_bucket_report():
    """A synthetic plan: 1,000,000 images over 40 buckets, three too small for a batch of 4."""
    from simpletuner.data.report import BucketReport, batches_in_bucket

    sizes = [(512 + 64 * i, 2048 - 32 * i) for i in range(40)]
    counts = {size: 40_000 - 1_000 * i for i, size in enumerate(sizes[:37])}
    counts.update({sizes[37]: 3, sizes[38]: 2, sizes[39]: 1})
    counts[sizes[0]] += 1_000_000 - sum(counts.values())
    batches = sum(batches_in_bucket(n, 0, 4) for n in counts.values())
    return BucketReport(4, 1, {"photos": dict(sorted(counts.items()))}, {"photos": 0}, {"photos": batches}, ()), counts


def test_startup_table_stays_readable_at_a_million_images_and_40_buckets():
    import sys

    from simpletuner.data.report import BUCKET_ROWS

    report, counts = _forty_bucket_report()
    lines = report.table().splitlines()
    rows = [line for line in lines[1:] if line.startswith("photos")]
    assert len(lines) <= 20 and len(rows) == BUCKET_ROWS + 1  # the largest, then one row for the rest
    assert max(len(line) for line in lines) <= 100
    header = lines[0]
    right_edge = header.index("images") + len("images")
    assert all(row[right_edge - 1].isdigit() and row[right_edge] == " " for row in rows)  # under their heading
    shown = sum(int(row[:right_edge].split()[-1].replace(",", "")) for row in rows)
    assert shown == 1_000_000
    assert rows[-1].split()[1:3] == ["+28", "more"] and "3 of them not trained on" in rows[-1]
    assert "1,000,000 images" in lines[-2] and f"{report.batches_per_epoch:,} steps per epoch" in lines[-1]
    every = report.table(bucket_rows=sys.maxsize).splitlines()
    assert sum(line.startswith("photos") for line in every) == 40
    assert sum("not trained on" in line for line in every) == 3


def test_print_sampler_statistics_lists_every_bucket(tmp_path):
    import json

    from simpletuner.config.loader import load_config
    from simpletuner.data.pipeline import load_backends, prepare_training_data

    data = tmp_path / "photos"
    data.mkdir()
    for index in range(16):  # 16 aspect ratios: 16 buckets of one image
        Image.new("RGB", (64 + 8 * index, 64), (index, 90, 160)).save(data / f"img{index}.png")
    datasets = [{"id": "photos", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache"),
                 "aspect_bucket_alignment": 8},
                {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": str(tmp_path / "text")}]
    (tmp_path / "mdb.json").write_text(json.dumps(datasets))
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config",
            str(tmp_path / "mdb.json"), "--resolution", "64", "--resolution_type", "pixel", "--caption_strategy",
            "filename"]

    def bucket_rows(*flags):
        config = load_config(argv + list(flags), env={}, cwd=tmp_path)
        table = prepare_training_data(config, load_backends(config), show_progress=False).table()
        return [line for line in table.splitlines() if line.startswith("photos ")]

    short = bucket_rows()
    assert len(short) == 13 and "+4 more" in short[-1]
    assert len(bucket_rows("--print_sampler_statistics")) == 16
