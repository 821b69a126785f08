"""Step time with --dataloader_prefetch over step time without, with slow storage simulated.

Usage::

    python benchmarks/prefetch.py [--read_delay_ms D] [--steps N] [--warmup W] [--rounds R]
                                  [--batch_size B] [--resolution P] [--threads T] [--qlen Q]

The last line printed is exactly ``prefetch_step_ratio: X`` with X = median
trainer step time with prefetch / median step time without.  Our targets:
X <= 0.8 when cache reads are slow (``--read_delay_ms 20``, the default), and
X <= 1.02 when they are not (``--read_delay_ms 0``).

What runs
---------
* A tiny random SDXL model and a generated dataset of one size (one bucket),
  in a temporary folder; the caches are filled by a first, unmeasured run.
* Slow storage: every cache read (``TensorStore.load``: a latent or a text
  embed) first sleeps ``D`` ms, as a read from S3 or a network disk would
  wait; a sleep, like a real read, lets other threads run.  The trainer's
  in-memory copy of decoded entries is turned off for the measurement, so
  every step reads its entries, as with a dataset larger than that memory
  (``--in_memory`` keeps it: then only the first epoch reads).
* The real ``Trainer``, W + N optimizer steps per run, once without and once
  with ``--dataloader_prefetch --dataloader_prefetch_qlen Q``; R rounds
  alternate the two so load from other processes hits both alike.  A step is
  the time between the ends of two consecutive steps (``_after_step``), so it
  includes waiting for the batch; start-up is excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

SEED = 0


def _config(root: Path, model: Path, args: argparse.Namespace, output: str, *extra: str) -> Any:
    from simpletuner.config.loader import load_config

    argv = [
        "--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
        "--data_backend_config", str(root / "multidatabackend.json"), "--output_dir", str(root / output),
        "--lora_rank", "16", "--learning_rate", "1e-4", "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.warmup + args.steps), "--checkpointing_steps", "1000000",
        "--seed", str(SEED), "--mixed_precision", "no", "--report_to", "none",
        "--resolution", str(args.resolution), "--resolution_type", "pixel_area",
        "--aspect_bucket_alignment", "16", "--torch_num_threads", str(args.threads), *extra,
    ]
    return load_config(argv, env={}, cwd=root)


def _step_times(config: Any, warmup: int) -> list[float]:
    """The run's step times after ``warmup`` steps, in seconds."""
    from accelerate.state import AcceleratorState

    from simpletuner.training.trainer import Trainer

    ends: list[float] = []

    class Timed(Trainer):
        def _after_step(self, *hook_args: Any) -> None:
            super()._after_step(*hook_args)
            ends.append(time.perf_counter())

    AcceleratorState._reset_state(reset_partial_state=True)
    Timed(config, show_progress=False).run()
    return [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])]


def _slow_reads(delay_s: float, in_memory: bool) -> None:
    """Every cache read waits ``delay_s`` first; decoded entries are kept in memory only if ``in_memory``."""
    from simpletuner.caching.store import TensorStore
    from simpletuner.training.batches import CacheLookup

    load = TensorStore.load

    def slow_load(self: Any, key: str) -> Any:
        time.sleep(delay_s)
        return load(self, key)

    TensorStore.load = slow_load
    if not in_memory:
        CacheLookup._remember = lambda self, key, tensors: None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--read_delay_ms", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--qlen", type=int, default=10)
    parser.add_argument("--in_memory", action="store_true",
                        help="keep the trainer's in-memory copy of decoded entries (reads only in the first epoch)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    import transformers

    transformers.logging.disable_progress_bar()

    from simpletuner.tools.demo_data import make_demo_dataset
    from simpletuner.tools.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model("sdxl", root / "model", seed=SEED)
        make_demo_dataset(root / "data", count=4 * args.batch_size, sizes=((args.resolution,) * 2,), seed=SEED)
        (root / "multidatabackend.json").write_text(json.dumps([
            {"id": "bench", "type": "local", "instance_data_dir": str(root / "data"),
             "cache_dir_vae": str(root / "cache" / "vae"), "caption_strategy": "textfile", "crop": False},
            {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
             "cache_dir": str(root / "cache" / "text")},
        ]), encoding="utf-8")
        # Fill the caches, unmeasured and at full speed.
        _step_times(_config(root, model, argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1}), "fill"), 1)
        _slow_reads(args.read_delay_ms / 1000, args.in_memory)
        plain: list[float] = []
        prefetching: list[float] = []
        for round_ in range(args.rounds):
            plain += _step_times(_config(root, model, args, f"plain{round_}"), args.warmup)
            prefetching += _step_times(_config(root, model, args, f"prefetch{round_}", "--dataloader_prefetch",
                                               "--dataloader_prefetch_qlen", str(args.qlen)), args.warmup)
    reads = 2 * args.batch_size
    print(f"cache reads per step: {reads} (latent + text embed per sample), each delayed {args.read_delay_ms:g} ms"
          + ("; entries kept in memory after their first read" if args.in_memory else ""))
    print(f"steps measured: {len(plain)} without, {len(prefetching)} with prefetch (qlen {args.qlen})")
    for name, times in (("without prefetch", plain), ("with prefetch", prefetching)):
        print(f"{name}: median {statistics.median(times) * 1000:.1f} ms/step, "
              f"mean {statistics.fmean(times) * 1000:.1f} ms/step")
    print(f"prefetch_step_ratio: {statistics.median(prefetching) / statistics.median(plain):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
