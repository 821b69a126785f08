"""How fast dataset discovery reads a folder of images, cold and warm.

Usage::

    python benchmarks/discovery.py [--images N] [--captions filename|textfile]
                                   [--workers W] [--repeat R] [--folder PATH] [--progress]

What runs
---------
* A folder of ``N`` small images (default 20,000) is generated once: half JPEG,
  half PNG, sizes between 48 and 200 pixels a side, in 20 sub-folders, with a
  ``.txt`` caption beside each image.  It lives in the system temporary folder
  (``simpletuner-discovery-bench-N``) and is reused by later runs; delete it or
  pass ``--folder`` to start over.  Files are written once, so the operating
  system's page cache is warm on every run but the first: the figures measure
  discovery's own work (directory walk, stat, header parse, integrity check,
  caption read, result assembly), not the disk.
* **cold**: ``simpletuner.data.discovery.discover`` on the folder with no
  saved metadata (``discovery.json`` deleted first), so every header is read
  and every file's tail is checked.
* **warm**: the same call again with the metadata the cold run saved, so only
  the directory walk, stat and captions are redone.

Each is run ``R`` times (default 3) and the best time is reported, as the
least disturbed by other processes on the machine.

The last line printed is exactly ``images_per_second: N`` for the cold run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from simpletuner.data.discovery import DISCOVERY_FILE, discover  # noqa: E402
from simpletuner.data.schema import DatasetConfig  # noqa: E402

_READY = ".complete"


def make_images(folder: Path, count: int) -> None:
    """Write ``count`` small JPEG/PNG images with captions, unless already there."""
    marker = folder / _READY
    if marker.is_file() and marker.read_text() == str(count):
        return
    if folder.exists():
        shutil.rmtree(folder)
    rng = random.Random(0)
    for index in range(count):
        sub = folder / f"part{index % 20:02d}"
        if index < 20:
            sub.mkdir(parents=True, exist_ok=True)
        width, height = rng.randint(48, 200), rng.randint(48, 200)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (width, height), colour)
        stem = sub / f"image_{index:06d}"
        if index % 2:
            image.save(stem.with_suffix(".png"))
        else:
            image.save(stem.with_suffix(".jpg"), quality=85)
        stem.with_suffix(".txt").write_text(f"a flat colour {index}", encoding="utf-8")
    marker.write_text(str(count))


def _dataset(folder: Path, cache: Path, captions: str) -> DatasetConfig:
    return DatasetConfig(
        id="bench",
        instance_data_dir=str(folder),
        cache_dir_vae=str(cache),
        text_embeds=None,
        caption_strategy=captions,
        instance_prompt=None,
        resolution=1024,
        resolution_type="pixel_area",
        minimum_image_size=None,
        crop=False,
        crop_style="center",
        crop_aspect="square",
        repeats=0,
        probability=1.0,
        aspect_bucket_alignment=64,
    )


def _time(dataset: DatasetConfig, workers: int | None, progress: bool, cold: bool):
    if cold:
        try:
            os.unlink(os.path.join(dataset.cache_dir_vae, DISCOVERY_FILE))
        except FileNotFoundError:
            pass
    started = time.perf_counter()
    result = discover(dataset, progress=progress, workers=workers)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--captions", choices=("filename", "textfile"), default="textfile")
    parser.add_argument("--workers", type=int, default=None, help="discovery threads (default: automatic)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    folder = args.folder or Path(tempfile.gettempdir()) / f"simpletuner-discovery-bench-{args.images}"
    started = time.perf_counter()
    make_images(folder / "images", args.images)
    print(f"dataset: {args.images} images in {folder / 'images'} (ready in {time.perf_counter() - started:.1f}s)")
    print(f"cpu cores: {os.cpu_count()}, captions: {args.captions}, workers: {args.workers or 'automatic'}")
    cache = folder / "cache"
    dataset = _dataset(folder / "images", cache, args.captions)

    cold_times, warm_times = [], []
    for _ in range(max(1, args.repeat)):
        seconds, cold = _time(dataset, args.workers, args.progress, cold=True)
        cold_times.append(seconds)
        seconds, warm = _time(dataset, args.workers, args.progress, cold=False)
        warm_times.append(seconds)
    assert len(cold.records) == args.images, cold.summary()
    assert cold.header_reads == args.images and warm.header_reads == 0
    assert warm.records == cold.records

    cold_best, warm_best = min(cold_times), min(warm_times)
    print(f"cold: {', '.join(f'{t:.3f}s' for t in cold_times)} -> best {cold_best:.3f}s, "
          f"{args.images / cold_best:,.0f} images/s")
    print(f"warm: {', '.join(f'{t:.3f}s' for t in warm_times)} -> best {warm_best:.3f}s, "
          f"{args.images / warm_best:,.0f} images/s")
    print(f"images_per_second: {args.images / cold_best:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
