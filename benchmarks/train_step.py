"""Per-step cost of our trainer against a bare diffusers + peft loop, in one process.

Usage::

    python benchmarks/train_step.py [--steps N] [--batch_size B] [--resolution R]
                                    [--mixed_precision no|bf16] [--warmup W] [--chunk K]
                                    [--progress]

What runs
---------
* A tiny random SDXL model (``simpletuner.tools.tiny_model``) and a generated
  dataset whose images all have one size (so one aspect bucket), written to a
  temporary folder.
* **Trainer**: ``simpletuner.training.trainer.Trainer`` built from CLI flags by
  ``load_config`` exactly as ``train.py`` would (LoRA rank 16 on the family's
  default targets, ``adamw_bf16`` = torch-optimi AdamW, constant lr, the
  default ``max_grad_norm``, ``report_to none``, no checkpoint inside the run),
  for ``W + N`` optimizer steps.  The only change is a subclass whose
  ``_after_step`` also records a timestamp after calling the real one.  A
  trainer step is the time from the end of the previous step's hook to the end
  of this step's hook, so it covers the whole loop body: sampler, cache reads
  and collate, forward, backward, clipping, optimizer, lr schedule and the
  trainer's own per-step bookkeeping (logging, progress, checkpoint check).
  Start-up (data planning, cache filling, model loading) is excluded and
  printed separately.
* **Bare loop**: the same UNet loaded with diffusers, frozen and cast to the
  training dtype, ``add_adapter`` with a peft ``LoraConfig`` of the same rank,
  alpha and targets (LoRA weights upcast to fp32), torch-optimi AdamW with the
  same hyper-parameters, diffusers' ``constant`` lr schedule, one batch of the
  trainer's own cached latents / text embeds / time_ids held in memory in the
  training dtype (the ideal: no I/O), the same noise and timestep sampling
  (``torch.randn``/``torch.randint`` from a private generator, DDPM
  ``add_noise``), ``torch.autocast("cpu", bfloat16)`` around the forward pass
  for bf16 (what accelerate does), fp32 MSE, ``backward``,
  ``clip_grad_norm_`` over a parameter list built once, ``step``,
  ``zero_grad(set_to_none=True)`` and ``loss.item()`` (what any loop that logs
  its loss pays).

Method
------
Both loops run in the same process and are **interleaved**: the trainer runs
``W`` warm-up steps, then the bare loop runs ``W`` warm-up steps, then the
measured part alternates ``K`` trainer steps and ``K`` bare steps until each
has ``N`` (rounded up to a multiple of ``K``).  The bare chunks run from inside
the trainer's step hook and are excluded from the trainer's step times.  Both
loops therefore see the same machine state (frequency, cache, other load)
throughout, and slow drift affects both alike.  The figures are the median and
mean of the per-step times; ``step_time_ratio`` is trainer median / bare
median.

Process-wide settings a trainer could change (torch's thread count, autograd
anomaly mode) are restored to their start-up values while the bare loop runs,
so the bare loop stays the ideal and the trainer alone pays for them; the
script prints them, and whether ``tracemalloc`` is tracing, as seen inside the
trainer loop.

The last line printed is exactly ``step_time_ratio: R``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import torch  # noqa: E402  (after the environment above)

LORA_RANK = 16
LEARNING_RATE = 1e-4
SEED = 0


def _quiet_libraries() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("simpletuner", "diffusers", "transformers", "accelerate", "peft", "torchao", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


# --------------------------------------------------------------------------- #
# Project folder: tiny model, one-bucket dataset, config
# --------------------------------------------------------------------------- #


def _make_project(root: Path, args: argparse.Namespace, total_steps: int) -> Any:
    from simpletuner.config.loader import load_config
    from simpletuner.tools.demo_data import make_demo_dataset
    from simpletuner.tools.tiny_model import make_tiny_model

    model = make_tiny_model("sdxl", root / "model", seed=SEED)
    side = int(args.resolution)
    count = max(4 * args.batch_size, 16)
    make_demo_dataset(root / "data", count=count, sizes=((side, side),), seed=SEED)
    # One epoch must hold the whole run: the trainer's loop does not start a
    # second pass over the sampler (see the report), so repeat the images.
    repeats = -(-(total_steps + 1) * args.batch_size // count)
    backends = [
        {
            "id": "bench",
            "type": "local",
            "instance_data_dir": str(root / "data"),
            "cache_dir_vae": str(root / "cache" / "vae"),
            "caption_strategy": "textfile",
            "crop": False,
            "repeats": repeats,
        },
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
         "cache_dir": str(root / "cache" / "text")},
    ]
    backend_file = root / "multidatabackend.json"
    backend_file.write_text(json.dumps(backends, indent=2), encoding="utf-8")
    argv = [
        "--model_family", "sdxl",
        "--pretrained_model_name_or_path", str(model),
        "--data_backend_config", str(backend_file),
        "--output_dir", str(root / "output"),
        "--model_type", "lora",
        "--lora_rank", str(LORA_RANK),
        "--optimizer", "adamw_bf16",
        "--learning_rate", str(LEARNING_RATE),
        "--lr_scheduler", "constant",
        "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(total_steps),
        "--checkpointing_steps", str(total_steps + 1),  # no checkpoint inside the measured loop
        "--seed", str(SEED),
        "--mixed_precision", args.mixed_precision,
        "--report_to", "none",
        "--resolution", str(args.resolution),
        "--resolution_type", "pixel_area",
        "--aspect_bucket_alignment", "16",
    ]
    # cwd = the project folder and an empty environment: no config file of the
    # user's (config/config.json, CONFIG_PATH) can leak in.
    return load_config(argv, env={}, cwd=root)


def _cached_batch(root: Path, batch_size: int, resolution: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One batch built from the trainer's own cache entries, in the training dtype."""
    from safetensors.torch import load_file

    def entries(folder: Path) -> list[dict[str, torch.Tensor]]:
        files = sorted(p for p in folder.rglob("*.safetensors") if not p.name.startswith(".tmp-"))
        return [load_file(p) for p in files]

    latents = [e["latent"] for e in entries(root / "cache" / "vae")]
    texts = entries(root / "cache" / "text")
    if not latents or not texts:
        raise RuntimeError("the trainer left no cache entries to build the bare loop's batch from")
    side = int(resolution)
    batch = {
        "latents": torch.stack([latents[i % len(latents)] for i in range(batch_size)]),
        "prompt_embeds": torch.stack([texts[i % len(texts)]["prompt_embeds"] for i in range(batch_size)]),
        "pooled_prompt_embeds": torch.stack([texts[i % len(texts)]["pooled_prompt_embeds"] for i in range(batch_size)]),
        "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch_size, dtype=torch.float32),
    }
    return {k: v.to(dtype) for k, v in batch.items()}


# --------------------------------------------------------------------------- #
# The bare loop
# --------------------------------------------------------------------------- #


class BareLoop:
    """The ideal diffusers + peft training step on in-memory tensors."""

    def __init__(self, config: Any, dtype: torch.dtype) -> None:
        import optimi
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        from simpletuner.families.sdxl import SDXLFamily
        from simpletuner.training.optimizers import betas_from

        model = config.pretrained_model_name_or_path
        self.dtype = dtype
        self.autocast = config.mixed_precision == "bf16"
        self.max_grad_norm = config.max_grad_norm
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
        unet.requires_grad_(False)
        unet.to(dtype=dtype)
        alpha = config.lora_alpha if config.lora_alpha is not None else config.lora_rank
        unet.add_adapter(
            LoraConfig(
                r=config.lora_rank, lora_alpha=alpha, lora_dropout=config.lora_dropout,
                init_lora_weights=True, target_modules=list(SDXLFamily.default_lora_targets),
            )
        )
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        unet.train()
        self.unet = unet
        self.optimizer = optimi.AdamW(
            self.params, lr=config.learning_rate, betas=betas_from(config),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon, foreach=False,
        )
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        self.noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        self.num_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.generator = torch.Generator().manual_seed(SEED)
        self.batch: Optional[dict[str, torch.Tensor]] = None

    def step(self) -> float:
        batch = self.batch
        latents = batch["latents"]
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.dtype)
        timesteps = torch.randint(0, self.num_timesteps, (latents.shape[0],), generator=self.generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with context:
            prediction = self.unet(
                noisy, timesteps, encoder_hidden_states=batch["prompt_embeds"],
                added_cond_kwargs={"text_embeds": batch["pooled_prompt_embeds"], "time_ids": batch["time_ids"]},
            ).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


# --------------------------------------------------------------------------- #
# Interleaving driver
# --------------------------------------------------------------------------- #


class Bench:
    def __init__(self, args: argparse.Namespace, bare: BareLoop, load_batch: Callable[[], dict]) -> None:
        self.warmup = args.warmup
        self.chunk = args.chunk
        self.bare = bare
        self.load_batch = load_batch
        self.baseline_threads = torch.get_num_threads()
        self.trainer_times: list[float] = []
        self.bare_times: list[float] = []
        self.last_mark: Optional[float] = None
        self.run_started = 0.0
        self.first_step_at: Optional[float] = None
        self.seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def _ideal_settings(self):
        threads = torch.get_num_threads()
        anomaly = torch.is_anomaly_enabled()
        torch.set_num_threads(self.baseline_threads)
        torch.set_anomaly_enabled(False)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.set_anomaly_enabled(anomaly)

    def _run_bare(self, steps: int, record: bool) -> None:
        with self._ideal_settings():
            for _ in range(steps):
                started = time.perf_counter()
                self.bare.step()
                if record:
                    self.bare_times.append(time.perf_counter() - started)

    def on_trainer_step(self, step: int) -> None:
        now = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = now
        if self.last_mark is not None and step > self.warmup:
            self.trainer_times.append(now - self.last_mark)
        if step == self.warmup + 1:
            self.seen = {
                "threads": torch.get_num_threads(),
                "tracemalloc": tracemalloc.is_tracing(),
                "anomaly": torch.is_anomaly_enabled(),
            }
        if step == self.warmup:
            self.bare.batch = self.load_batch()
            self._run_bare(self.warmup, record=False)
        elif step > self.warmup and (step - self.warmup) % self.chunk == 0:
            self._run_bare(self.chunk, record=True)
        self.last_mark = time.perf_counter()


def _timed_trainer_class(bench: Bench) -> type:
    from simpletuner.training.trainer import Trainer

    class TimedTrainer(Trainer):
        """Our trainer, unchanged, plus a timestamp after each step's own hook."""

        def _after_step(self, *args: Any, **kwargs: Any) -> None:
            super()._after_step(*args, **kwargs)
            bench.on_trainer_step(self.state.global_step)

    return TimedTrainer


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1e3, statistics.fmean(values) * 1e3


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="measured steps per loop")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps per loop first")
    parser.add_argument("--chunk", type=int, default=4, help="steps per interleaved chunk")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--progress", action="store_true", help="let the trainer draw its tqdm bar")
    args = parser.parse_args(argv)
    args.warmup = max(args.warmup, 1)
    args.chunk = max(1, min(args.chunk, args.steps))
    measured = -(-args.steps // args.chunk) * args.chunk
    total_steps = args.warmup + measured

    torch.manual_seed(SEED)
    threads_at_start = torch.get_num_threads()
    import_started = time.perf_counter()
    from simpletuner.training import trainer as _trainer_module  # noqa: F401
    from simpletuner.training.setup import training_dtype

    import_seconds = time.perf_counter() - import_started
    _quiet_libraries()

    with tempfile.TemporaryDirectory(prefix="st_bench_") as folder:
        root = Path(folder)
        with contextlib.redirect_stdout(io.StringIO()):
            config = _make_project(root, args, total_steps)
        dtype = training_dtype(config)
        bare = BareLoop(config, dtype)
        bench = Bench(args, bare, lambda: _cached_batch(root, args.batch_size, args.resolution, dtype))
        trainer = _timed_trainer_class(bench)(config, show_progress=args.progress)
        bench.run_started = time.perf_counter()
        trainer.run()

    startup = (bench.first_step_at or bench.run_started) - bench.run_started
    trainer_median, trainer_mean = _ms(bench.trainer_times)
    bare_median, bare_mean = _ms(bench.bare_times)
    ratio = trainer_median / bare_median
    print(
        f"config: batch {args.batch_size}, resolution {args.resolution} "
        f"({args.resolution // 8}x{args.resolution // 8} latents), mixed_precision {args.mixed_precision}, "
        f"LoRA rank {LORA_RANK}, max_grad_norm {config.max_grad_norm:g}, "
        f"{args.warmup} warm-up + {measured} measured steps per loop, interleaved in chunks of {args.chunk}"
    )
    print(
        f"torch threads: {threads_at_start} at start, {bench.seen.get('threads')} in the trainer loop "
        f"(os.cpu_count()={os.cpu_count()}); tracemalloc in loop: {bench.seen.get('tracemalloc')}; "
        f"anomaly mode in loop: {bench.seen.get('anomaly')}"
    )
    print(f"import simpletuner.training.trainer: {import_seconds:.2f} s; trainer start-up to first step: {startup:.2f} s")
    print(f"trainer step: median {trainer_median:.2f} ms, mean {trainer_mean:.2f} ms ({len(bench.trainer_times)} steps)")
    print(f"bare step:    median {bare_median:.2f} ms, mean {bare_mean:.2f} ms ({len(bench.bare_times)} steps)")
    print(f"step_time_ratio: {ratio:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
