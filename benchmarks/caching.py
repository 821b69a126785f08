"""Cache-filling throughput against a bare loop calling the same encoders on the same batches.

Usage::

    python benchmarks/caching.py [--images N] [--size S] [--vae_batch_size B]
                                 [--text_batch_size T] [--repeat R] [--threads T]

Our standard: filling the caches costs at most 10% more than the bare loop.
The last line printed is exactly ``overhead_ratio: R`` with R = median
cache time / median bare-loop time.

What runs
---------
* A tiny random SDXL model (``simpletuner.tools.tiny_model``) and ``N``
  generated S x S images (``simpletuner.tools.demo_data``), each caption made
  unique so there are ``N`` prompts to encode too.
* **Cache**: ``simpletuner.training.caches.prepare_caches``, the function the
  trainer calls, on empty cache folders: load the VAE, decode, resize and
  crop each image, encode in batches of ``B``, write each entry atomically,
  free the VAE, load the text encoders, encode the distinct captions (plus
  the empty prompt) in batches of ``T``, write them, free the encoders.
* **Bare loop**: what a hand-written precompute script does with the same
  pieces: ``family.load_vae``, the same ``load_pixels`` for each image, the
  same batches (grouped by size, ``B`` at a time) through
  ``family.encode_images`` with one generator, one ``safetensors.save_file``
  per latent into a flat folder; then ``family.load_text_encoders``, the same
  prompts ``T`` at a time through ``family.encode_text``, one ``save_file``
  per embed.  No keys, no checks, no temporary files.

Both include model loading.  They run in the same process, in ``R`` measured
rounds after one unmeasured round; each round runs both back to back (which
goes first alternates), so both see the same machine load.  Throughputs are
medians over rounds; the ratio is the median of the rounds' cache / bare
quotients, which cancels load other processes add for longer than a round.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402  (after the environment above)

SEED = 0


def _quiet() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("simpletuner", "diffusers", "transformers", "accelerate", "torchao", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from simpletuner.logs import quiet_libraries

    quiet_libraries()


def _project(root: Path, args: argparse.Namespace) -> Any:
    from simpletuner.config.loader import load_config
    from simpletuner.tools.demo_data import make_demo_dataset
    from simpletuner.tools.tiny_model import make_tiny_model

    model = make_tiny_model("sdxl", root / "model", seed=SEED)
    data = make_demo_dataset(root / "data", count=args.images, sizes=((args.size, args.size),), seed=SEED)
    for index, caption in enumerate(sorted(data.glob("*.txt"))):
        caption.write_text(f"{caption.read_text(encoding='utf-8').strip()}, number {index}", encoding="utf-8")
    (root / "mdb.json").write_text(json.dumps([
        {"id": "bench", "type": "local", "instance_data_dir": str(data), "cache_dir_vae": str(root / "cache/vae"),
         "caption_strategy": "textfile", "resolution": args.size, "resolution_type": "pixel",
         "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(root / "cache/text")},
    ]))
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
            "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / "output"),
            "--vae_batch_size", str(args.vae_batch_size), "--text_encoder_batch_size", str(args.text_batch_size),
            "--mixed_precision", "no", "--seed", str(SEED), "--train_batch_size", "1"]
    return load_config(argv, env={}, cwd=root)


class _Phases:
    """Times the switch from latents to text embeds by watching the text encoders load."""

    def __init__(self, family: Any) -> None:
        self.text_started = 0.0
        real = family.load_text_encoders

        def load_text_encoders(source: Any) -> Any:
            self.text_started = time.perf_counter()
            return real(source)

        family.load_text_encoders = load_text_encoders


def _cache_round(config: Any, root: Path, accelerator: Any) -> tuple[float, float]:
    """(latent seconds, text seconds) of ``prepare_caches`` on empty folders."""
    from simpletuner.data.pipeline import load_backends, prepare_training_data
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.training.caches import prepare_caches

    shutil.rmtree(root / "cache", ignore_errors=True)
    family = get_family("sdxl", config)
    source = ModelSource.from_config(config, family)
    data = prepare_training_data(config, load_backends(config), show_progress=False)
    phases = _Phases(family)
    started = time.perf_counter()
    prepare_caches(family, source, data, config, accelerator, show_progress=False, seed=SEED)
    ended = time.perf_counter()
    return phases.text_started - started, ended - phases.text_started


def _bare_round(config: Any, root: Path) -> tuple[float, float]:
    """(latent seconds, text seconds) of the hand-written loop."""
    from safetensors.torch import save_file

    from simpletuner.data.pipeline import load_backends, prepare_training_data
    from simpletuner.data.transforms import load_pixels
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    out = root / "bare"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    family = get_family("sdxl", config)
    source = ModelSource.from_config(config, family)
    samples = prepare_training_data(config, load_backends(config), show_progress=False).all_samples()
    by_size: dict[Any, list] = defaultdict(list)
    for sample in samples:
        by_size[sample.target_size].append(sample)
    started = time.perf_counter()
    vae = family.load_vae(source)
    generator = torch.Generator().manual_seed(SEED)
    written = 0
    for group in by_size.values():
        for start in range(0, len(group), config.vae_batch_size):
            pixels = torch.stack([load_pixels(s) for s in group[start : start + config.vae_batch_size]])
            for latent in family.encode_images(vae, pixels, generator):
                save_file({"latent": latent.contiguous()}, str(out / f"latent-{written}.safetensors"))
                written += 1
    del vae
    text_started = time.perf_counter()
    text = family.load_text_encoders(source)
    prompts = sorted({s.caption for s in samples} | {""})
    for start in range(0, len(prompts), config.text_encoder_batch_size):
        chunk = prompts[start : start + config.text_encoder_batch_size]
        for index, tensors in enumerate(family.encode_text(text, chunk)):
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"text-{start + index}.safetensors"))
    del text
    return text_started - started, time.perf_counter() - text_started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latents are side/8)")
    parser.add_argument("--vae_batch_size", type=int, default=4)
    parser.add_argument("--text_batch_size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds of each (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeat < 1 or args.size < 16:
        parser.error("--images and --repeat must be at least 1, --size at least 16")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from accelerate import Accelerator

    _quiet()
    with tempfile.TemporaryDirectory(prefix="st_cache_bench_") as folder:
        root = Path(folder)
        with contextlib.redirect_stdout(io.StringIO()):
            config = _project(root, args)
        accelerator = Accelerator(cpu=True)
        cache_times, bare_times = [], []
        for round_number in range(args.repeat + 1):  # round 0 warms file and import caches
            # Alternate which goes first, so neither always meets the other's leftovers.
            if round_number % 2:
                bare = _bare_round(config, root)
                cache = _cache_round(config, root, accelerator)
            else:
                cache = _cache_round(config, root, accelerator)
                bare = _bare_round(config, root)
            if round_number:
                cache_times.append(cache)
                bare_times.append(bare)
    prompts = args.images + 1
    print(f"config: {args.images} images of {args.size}x{args.size}, VAE batch {args.vae_batch_size}, "
          f"{prompts} prompts, text batch {args.text_batch_size}, torch threads {torch.get_num_threads()}, "
          f"{args.repeat} rounds")
    for name, times in (("cache", cache_times), ("bare loop", bare_times)):
        latent = statistics.median(t[0] for t in times)
        text = statistics.median(t[1] for t in times)
        print(f"{name + ':':<11} latents {latent:.3f} s ({args.images / latent:.1f} images/s), "
              f"text embeds {text:.3f} s ({prompts / text:.1f} prompts/s), "
              f"total {statistics.median(sum(t) for t in times):.3f} s")
    # Each round's pair ran back to back, so its quotient cancels load that
    # other processes put on the machine for longer than a round.
    ratio = statistics.median(sum(c) / sum(b) for c, b in zip(cache_times, bare_times))
    spread = sorted(sum(c) / sum(b) for c, b in zip(cache_times, bare_times))
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in spread)}")
    print(f"overhead_ratio: {ratio:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
