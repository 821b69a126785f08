"""How start-up grows with the dataset: 10k, 100k and 1M images.

Usage::

    python benchmarks/scale.py [--images 10000,100000,1000000] [--keep PATH]

What runs, for each size, in a fresh process (so peak RSS is that size's own)
-------------------------------------------------------------------------------
* A folder of ``N`` images, 1,000 per sub-folder, captions from the file
  names.  The images are **hard links** to 40 small template files (20 PNG,
  20 JPEG, each of another aspect ratio so the plan has 40 buckets): discovery
  reads every file's header through its own path, but the disk holds 40
  images, and each link costs a directory entry, not an inode (about 60 MB of
  directory blocks at 1M).  The folder is in the system temporary folder and
  removed afterwards unless ``--keep`` names one.
* **cold discovery**: ``discover`` with no ``discovery.json``: every header read.
* **unchanged re-scan**: the same call again; nothing is read but the listing.
* **re-scan +1%**: 1% more files in a new sub-folder; only those are read, and only
  they are written (``discovery.delta.json`` beside ``discovery.json``; the line
  "manifest +1%" gives both sizes).
* **buckets**: ``plan_dataset`` (bucket, resize and crop of every image).
* **sampler**: ``BucketBatchSampler`` built and its first batch drawn (the
  epoch's order is computed there).
* **cache check**: ``build_latent_cache`` over a latent cache already holding
  every entry (hard links to one real entry per bucket), i.e. the start-up
  check that every entry exists and is whole.  The VAE must not be loaded.
* **RSS**: resident memory held by the discovery result (RSS after discovery
  minus before, with the result alive), per image, and the process's peak.

Times are single runs on whatever the machine is doing at that moment; the
figures in documentation/PERFORMANCE.md say how loaded it was.  The last
lines print the growth factor from the second-largest to the largest size
for each phase (linear growth over 10x more images is 10x).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("cold", "rescan", "rescan_plus_1pct", "buckets", "sampler", "cache_check")
_PER_FOLDER = 1000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Clock:
    """Wall time and this process's CPU time (all threads) of one phase.

    On a shared machine the wall time includes waiting for other processes;
    the CPU time is the phase's own work, so growth factors use it.
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, figures: dict, phase: str) -> None:
        figures[phase] = time.perf_counter() - self.wall
        figures[phase + "_cpu"] = time.process_time() - self.cpu


def _templates(folder: Path) -> list[Path]:
    """40 small images of distinct aspect ratios, half PNG and half JPEG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(40):
        # Aspect ratios from 1:4.6 to 4.2:1 in even log steps: 40 buckets at 1024 pixel area.
        width, height = int(512 * math.exp(0.07 * (index - 20))), int(512 * math.exp(-0.07 * (index - 20)))
        suffix = ".png" if index % 2 else ".jpg"
        path = folder / f"template_{index:02d}{suffix}"
        Image.new("RGB", (width, height), (index * 6, 80, 160)).save(path)
        paths.append(path)
    return paths


def _link_images(images: Path, templates: list[Path], start: int, count: int, prefix: str = "d") -> None:
    for index in range(start, start + count):
        if index % _PER_FOLDER == 0 or index == start:
            sub = images / f"{prefix}{index // _PER_FOLDER:05d}"
            sub.mkdir(parents=True, exist_ok=True)
        template = templates[index % len(templates)]
        os.link(template, sub / f"a photo number {index:07d}{template.suffix}")


def _dataset(images: Path, cache: Path):
    from simpletuner.data.schema import DatasetConfig

    return DatasetConfig(
        id="scale", instance_data_dir=str(images), cache_dir_vae=str(cache), text_embeds=None,
        caption_strategy="filename", instance_prompt=None, resolution=1024, resolution_type="pixel_area",
        minimum_image_size=None, crop=False, crop_style="center", crop_aspect="square", repeats=0,
        probability=1.0, aspect_bucket_alignment=64,
    )


def _fill_cache(store, samples, keys) -> None:
    """Every entry present: one real entry per bucket, hard-linked under each key's name."""
    import torch

    real: dict = {}
    root = Path(store.root)
    for fan_out in range(256):
        (root / f"{fan_out:02x}").mkdir(parents=True, exist_ok=True)
    for sample, key in zip(samples, keys):
        name = root / key[:2] / f"{key}.safetensors"
        if sample.target_size not in real:
            height, width = sample.target_size
            store.save(key, {"latent": torch.zeros(4, height // 8, width // 8)})
            real[sample.target_size] = name
            continue
        os.link(real[sample.target_size], name)


def measure(count: int, folder: Path) -> dict:
    """One size's figures (runs in its own process)."""
    from simpletuner.caching.latents import build_latent_cache, latent_keys
    from simpletuner.caching.store import TensorStore
    from simpletuner.data.buckets import plan_dataset
    from simpletuner.data.discovery import discover
    from simpletuner.data.manifest import DELTA_FILE, DISCOVERY_FILE
    from simpletuner.data.sampler import BucketBatchSampler

    images, cache = folder / "images", folder / "cache"
    started = time.perf_counter()
    templates = _templates(folder / "templates")
    _link_images(images, templates, 0, count)
    figures: dict = {"images": count, "make_s": time.perf_counter() - started}
    dataset = _dataset(images, cache)

    gc.collect()
    before = _rss_bytes()
    clock = _Clock()
    found = discover(dataset, progress=False)
    clock.stop(figures, "cold")
    gc.collect()
    figures["rss_held_per_image"] = (_rss_bytes() - before) / count
    assert len(found.records) == count and found.header_reads == count, found.summary()
    del found
    gc.collect()

    clock = _Clock()
    again = discover(dataset, progress=False)
    clock.stop(figures, "rescan")
    assert again.header_reads == 0 and len(again.records) == count
    del again
    gc.collect()

    added = max(1, count // 100)
    _link_images(images, templates, count, added, prefix="new")
    clock = _Clock()
    found = discover(dataset, progress=False)
    clock.stop(figures, "rescan_plus_1pct")
    assert found.header_reads == added and len(found.records) == count + added, found.header_reads
    figures["manifest_bytes"] = (cache / DISCOVERY_FILE).stat().st_size
    delta = cache / DELTA_FILE
    figures["delta_bytes"] = delta.stat().st_size if delta.exists() else None  # None: compacted (small dataset)

    clock = _Clock()
    samples, _ = plan_dataset(found.records, dataset)
    clock.stop(figures, "buckets")
    figures["bucket_count"] = len({s.target_size for s in samples})

    clock = _Clock()
    sampler = BucketBatchSampler({dataset.id: samples}, batch_size=4, seed=0)
    next(iter(sampler))
    clock.stop(figures, "sampler")

    store = TensorStore(Path(cache) / "latents")
    keys = latent_keys(samples, "vae", "sdxl")
    _fill_cache(store, samples, keys)

    def no_vae():
        raise AssertionError("the cache is complete: the VAE must not be loaded")

    clock = _Clock()
    report = build_latent_cache(samples, keys, store, no_vae, None, None, batch_size=4, show_progress=False)
    clock.stop(figures, "cache_check")
    assert report.reused == len(samples), report
    figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures["phase_images"] = {"cold": count, "rescan": count, "rescan_plus_1pct": count + added,
                               "buckets": count + added, "sampler": count + added, "cache_check": count + added}
    return figures


def _report(results: list[dict]) -> None:
    print(f"cpu cores: {os.cpu_count()}, load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    header = f"{'phase':<18}" + "".join(f"{r['images']:>36,}" for r in results)
    print(header)
    for phase in PHASES:
        cells = "".join(f"{r[phase]:>7.2f}s {r[phase + '_cpu']:>7.2f}s cpu {r['phase_images'][phase] / r[phase + '_cpu']:>9,.0f}/s"
                        for r in results)
        print(f"{phase:<18}{cells}")
    print(f"{'RSS held/image':<18}" + "".join(f"{r['rss_held_per_image']:>34,.0f} B" for r in results))
    print(f"{'peak RSS':<18}" + "".join(f"{r['peak_rss_bytes'] / 2**20:>33,.0f} MB" for r in results))
    print(f"{'buckets':<18}" + "".join(f"{r['bucket_count']:>36}" for r in results))
    print(f"{'manifest +1%':<18}" + "".join(
        f"{_written(r):>36}" for r in results))
    print("each phase: wall time, CPU time of the process (all threads), images per CPU second")
    if len(results) >= 2:
        small, large = results[-2], results[-1]
        scale = large["images"] / small["images"]
        for kind, suffix in (("cpu time", "_cpu"), ("wall time", "")):
            growth = ", ".join(f"{p} {large[p + suffix] / small[p + suffix]:.1f}x" for p in PHASES)
            print(f"growth {small['images']:,} -> {large['images']:,} ({scale:.0f}x images), {kind}: {growth}")


def _written(figures: dict) -> str:
    """What the +1% re-scan wrote: the delta beside the untouched base, or the whole base when compacted."""
    base, delta = figures["manifest_bytes"], figures["delta_bytes"]
    if delta is None:
        return f"base rewritten, {base / 1e6:.1f} MB"
    return f"delta {delta / 1e3:,.0f} kB of {base / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="10000,100000,1000000", help="comma-separated dataset sizes")
    parser.add_argument("--keep", type=Path, default=None, help="build the folders here and keep them")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.folder)))
        return 0
    results = []
    for count in (int(n) for n in args.images.split(",")):
        base = args.keep or Path(tempfile.mkdtemp(prefix="simpletuner-scale-"))
        folder = base / f"n{count}"
        if folder.exists():
            shutil.rmtree(folder)
        try:
            output = subprocess.run(
                [sys.executable, __file__, "--one", str(count), "--folder", str(folder)],
                check=True, capture_output=True, text=True,
            ).stdout
        except subprocess.CalledProcessError as failed:
            print(failed.stdout, failed.stderr, file=sys.stderr)
            raise
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{count:,} images: made in {results[-1]['make_s']:.0f}s", flush=True)
    _report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
