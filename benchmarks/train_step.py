"""Per-step cost of our trainer against a bare diffusers + peft loop, in one process.

Usage::

    python benchmarks/train_step.py [--steps N] [--batch_size B] [--resolution R]
                                    [--mixed_precision no|bf16] [--warmup W]
                                    [--chunk K] [--threads T] [--progress]

Our standard: a training step within 5% of a bare diffusers + peft loop on the
same model and batch.  The last line printed is exactly ``step_time_ratio: R``
with R = trainer median step time / bare-loop median step time.

What runs
---------
* A tiny random SDXL model (``simpletuner.tools.tiny_model``) and a generated
  dataset whose images all have one size, R x R (so one aspect bucket and
  R/8 x R/8 latents), in a temporary folder.
* **Trainer**: ``simpletuner.training.trainer.Trainer`` on a config built by
  ``load_config`` from command-line flags, as ``train.py`` builds it: LoRA
  rank 16 on the family's default targets, ``--optimizer adamw_bf16``
  (torch-optimi AdamW), constant lr, the default ``max_grad_norm``,
  ``--report_to none``, no checkpoint inside the run, the given mixed
  precision; ``W + N`` optimizer steps.  The only addition is a subclass whose
  ``_after_step`` records a timestamp after calling the real one.  A trainer
  step is the time from the end of one step's hook to the end of the next, so
  it covers the whole loop body: sampler, cache reads and collate, noise,
  forward, backward, clipping, optimizer, lr schedule and the trainer's own
  bookkeeping (logging, progress bar, checkpoint check).  Start-up (data
  planning, cache filling, model loading) is excluded and printed apart.
* **Bare loop**: what a hand-written diffusers + peft script would do.  The
  same UNet loaded with ``UNet2DConditionModel.from_pretrained``, frozen and
  cast to the dtype the trainer's frozen weights have, ``add_adapter`` with a
  peft ``LoraConfig`` of the trainer's rank, alpha, dropout and targets (LoRA
  weights upcast to fp32), torch-optimi ``AdamW`` with the hyper-parameters
  read from the trainer's own optimizer, diffusers' ``constant`` lr schedule,
  one batch made from the trainer's own cache entries held in memory in the
  training dtype (the ideal: no I/O, no collate), the same noise and timestep
  draws (``torch.randn``/``torch.randint`` from a private generator, DDPM
  ``add_noise``), ``torch.autocast("cpu", bfloat16)`` around the forward pass
  when the trainer's accelerator uses bf16 (what accelerate does), fp32 MSE,
  ``backward``, clipping as the trainer's ``--grad_clip_method`` says
  (``clip_grad_value_`` by default, ``clip_grad_norm_`` for ``norm``) over a
  parameter list built once, ``step``, lr step, ``zero_grad`` as
  ``--set_grads_to_none`` says, and ``loss.item()`` (what
  any loop that logs its loss pays).  The bare loop is set up after the
  trainer's warm-up, from the trainer's live objects, so the two cannot drift
  apart in settings.

Method
------
Both loops run in the same process and are **interleaved**: the trainer runs
``W`` warm-up steps, then the bare loop runs ``W`` warm-up steps, then the
measured part alternates ``K`` trainer steps and ``K`` bare steps (``K = 1`` by
default: strict alternation) until each has ``N`` (rounded up to a multiple
of ``K``).  The bare chunks run from inside the trainer's step hook and are
excluded from the trainer's step times.  Both loops therefore see the same
machine state (clock speed, caches, other processes' load) throughout, and
slow drift hits both alike; fine alternation matters on a shared machine,
where load comes in bursts.  The figures are the median (the ratio's basis)
and mean of the per-step times.  Two cross-checks are printed too: the median
of the per-pair quotients (trainer step i / bare step i, which ran next to each
other) and the ratio of median process CPU times per step (which ignores time
other processes took; most telling with ``--threads 1``).

Process-wide settings a trainer could change (torch's thread count, autograd
anomaly mode) are put back to their start-up values while the bare loop runs,
so the bare loop stays the ideal and the trainer alone pays for them; the
script prints them, and whether ``tracemalloc`` is tracing, as seen inside the
trainer loop.  ``--threads 1`` steadies figures on a busy machine (with more
torch threads than free cores, OpenMP waits make single steps many times
slower, for both loops alike).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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
from typing import Any, Optional

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
HEAVY_MODULES = ("diffusers", "transformers", "peft", "accelerate", "optimi", "torchao", "bitsandbytes")


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
    make_demo_dataset(root / "data", count=max(4 * args.batch_size, 16), sizes=((side, side),), seed=SEED)
    backends = [
        {
            "id": "bench",
            "type": "local",
            "instance_data_dir": str(root / "data"),
            "cache_dir_vae": str(root / "cache" / "vae"),
            "caption_strategy": "textfile",
            "crop": False,
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
        *args.trainer_args,
    ]
    # cwd = the project folder and an empty environment: no config file of the
    # user's (config/config.json, CONFIG_PATH) can leak in.
    return load_config(argv, env={}, cwd=root)


def _cached_batch(root: Path, batch_size: int, resolution: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One batch made from the trainer's own cache entries, in the training dtype."""
    from simpletuner.caching.store import TensorStore

    def entries(folder: Path) -> list[dict[str, torch.Tensor]]:
        # <store root>/<fan-out>/<key>.safetensors[.z]; the store reads either form.
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and ".safetensors" in p.name and not p.name.startswith(".tmp-")
        )
        loaded = (TensorStore(p.parent.parent).load(p.name.split(".")[0]) for p in files)
        return [entry for entry in loaded if entry is not None]

    latents = [e["latent"] for e in entries(root / "cache" / "vae")]
    texts = entries(root / "cache" / "text")
    if not latents or not texts:
        raise RuntimeError("the trainer left no cache entries to build the bare loop's batch from")
    pick = range(batch_size)
    batch = {
        "latents": torch.stack([latents[i % len(latents)] for i in pick]),
        "prompt_embeds": torch.stack([texts[i % len(texts)]["prompt_embeds"] for i in pick]),
        "pooled_prompt_embeds": torch.stack([texts[i % len(texts)]["pooled_prompt_embeds"] for i in pick]),
        # original size, crop top-left, target size: what SDXL's micro-conditioning gets.
        "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch_size),
    }
    return {k: v.to(dtype) for k, v in batch.items()}


# --------------------------------------------------------------------------- #
# The bare loop
# --------------------------------------------------------------------------- #


class BareLoop:
    """The ideal diffusers + peft training step on in-memory tensors."""

    def __init__(
        self,
        model: str,
        lora: dict[str, Any],
        frozen_dtype: torch.dtype,
        autocast: bool,
        optimizer_settings: dict[str, Any],
        max_grad_norm: float,
        batch: dict[str, torch.Tensor],
        clip_by_value: bool = False,
        grads_to_none: bool = True,
    ) -> None:
        import optimi
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig

        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
        unet.requires_grad_(False)
        unet.to(dtype=frozen_dtype)
        unet.add_adapter(LoraConfig(init_lora_weights=True, **lora))
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        unet.train()
        self.unet = unet
        self.optimizer = optimi.AdamW(self.params, **optimizer_settings)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        self.noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        self.num_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.generator = torch.Generator().manual_seed(SEED)
        self.autocast = autocast
        self.max_grad_norm = max_grad_norm
        self.clip_by_value = clip_by_value
        self.grads_to_none = grads_to_none
        self.batch = batch

    @classmethod
    def mirroring(cls, trainer: Any, batch: dict[str, torch.Tensor]) -> "BareLoop":
        """A bare loop with the settings the trainer actually trains with."""
        config = trainer.config
        denoiser = trainer.accelerator.unwrap_model(trainer.denoiser)
        peft_config = denoiser.peft_config["default"]
        lora = {
            "r": peft_config.r,
            "lora_alpha": peft_config.lora_alpha,
            "lora_dropout": peft_config.lora_dropout,
            "target_modules": sorted(peft_config.target_modules),
        }
        frozen_dtype = next(p.dtype for p in denoiser.parameters() if not p.requires_grad)
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # unwrap accelerate's wrapper
        group = optimizer.param_groups[0]
        keys = ("lr", "betas", "weight_decay", "eps", "decouple_lr", "kahan_sum", "foreach")
        settings = {k: group[k] for k in keys if k in group}
        return cls(
            config.pretrained_model_name_or_path,
            lora,
            frozen_dtype,
            autocast=str(trainer.accelerator.mixed_precision) == "bf16",
            optimizer_settings=settings,
            max_grad_norm=config.max_grad_norm,
            batch=batch,
            # --grad_clip_method and --set_grads_to_none, as the trainer applies them.
            clip_by_value=getattr(config, "grad_clip_method", "norm") == "value",
            grads_to_none=getattr(config, "set_grads_to_none", True),
        )

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
        if self.max_grad_norm > 0 and self.clip_by_value:
            torch.nn.utils.clip_grad_value_(self.params, self.max_grad_norm)
        elif self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=self.grads_to_none)
        return loss.item()


# --------------------------------------------------------------------------- #
# Interleaving driver
# --------------------------------------------------------------------------- #


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.warmup = args.warmup
        self.chunk = args.chunk
        self.bare: Optional[BareLoop] = None
        self.baseline_threads = torch.get_num_threads()
        self.trainer_times: list[float] = []  # wall seconds per step
        self.bare_times: list[float] = []
        self.trainer_cpu: list[float] = []  # this process's CPU seconds per step
        self.bare_cpu: list[float] = []
        self.last_mark: Optional[float] = None
        self.last_cpu_mark = 0.0
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
                started, cpu_started = time.perf_counter(), time.process_time()
                self.bare.step()
                if record:
                    self.bare_times.append(time.perf_counter() - started)
                    self.bare_cpu.append(time.process_time() - cpu_started)

    def on_trainer_step(self, trainer: Any) -> None:
        now, cpu_now = time.perf_counter(), time.process_time()
        step = trainer.state.global_step
        if self.first_step_at is None:
            self.first_step_at = now
        if self.last_mark is not None and step > self.warmup:
            self.trainer_times.append(now - self.last_mark)
            self.trainer_cpu.append(cpu_now - self.last_cpu_mark)
        if step == self.warmup:
            self.seen = {
                "threads": torch.get_num_threads(),
                "tracemalloc": tracemalloc.is_tracing(),
                "anomaly": torch.is_anomaly_enabled(),
                "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__module__
                + "." + type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
            }
            batch = _cached_batch(self.root, self.args.batch_size, self.args.resolution, trainer.dtype)
            self.bare = BareLoop.mirroring(trainer, batch)
            self._run_bare(self.warmup, record=False)
        elif step > self.warmup and (step - self.warmup) % self.chunk == 0:
            self._run_bare(self.chunk, record=True)
        self.last_mark, self.last_cpu_mark = time.perf_counter(), time.process_time()


def _timed_trainer_class(bench: Bench) -> type:
    from simpletuner.training.trainer import Trainer

    class TimedTrainer(Trainer):
        """Our trainer, unchanged, plus a timestamp after each step's own hook."""

        def _after_step(self, *args: Any, **kwargs: Any) -> None:
            super()._after_step(*args, **kwargs)
            bench.on_trainer_step(self)

    return TimedTrainer


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1e3, statistics.fmean(values) * 1e3


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured steps per loop (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per loop first (default 3)")
    parser.add_argument("--chunk", type=int, default=1, help="steps per interleaved chunk (default 1)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128, help="image side; latents are a side/8 square")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--progress", action="store_true", help="let the trainer draw its tqdm bar")
    parser.add_argument(
        "--trainer_arg", dest="trainer_args", action="append", default=[], metavar="FLAG_OR_VALUE",
        help="extra train.py argument for the trainer's config, once per word, e.g. "
        "--trainer_arg=--compress_disk_cache --trainer_arg=true (the bare loop mirrors what it can)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads for both loops (default: torch's own choice); 1 steadies figures on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.resolution < 16:
        parser.error("--steps and --batch_size must be at least 1, --resolution at least 16")
    args.warmup = max(args.warmup, 1)
    args.chunk = max(1, min(args.chunk, args.steps))
    measured = -(-args.steps // args.chunk) * args.chunk
    total_steps = args.warmup + measured

    torch.manual_seed(SEED)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads_at_start = torch.get_num_threads()
    before = set(sys.modules)
    import_started = time.perf_counter()
    importlib.import_module("simpletuner.training.trainer")
    import_seconds = time.perf_counter() - import_started
    heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(HEAVY_MODULES))
    _quiet_libraries()

    with tempfile.TemporaryDirectory(prefix="st_bench_") as folder:
        root = Path(folder)
        with contextlib.redirect_stdout(io.StringIO()):
            config = _make_project(root, args, total_steps)
        bench = Bench(args, root)
        trainer = _timed_trainer_class(bench)(config, show_progress=args.progress)
        bench.run_started = time.perf_counter()
        trainer.run()

    startup = (bench.first_step_at or bench.run_started) - bench.run_started
    ratio = statistics.median(bench.trainer_times) / statistics.median(bench.bare_times)
    # Steps i of both loops ran next to each other, so their quotient cancels
    # load that changes slowly; CPU time ignores time other processes took.
    paired = statistics.median(t / b for t, b in zip(bench.trainer_times, bench.bare_times))
    cpu_ratio = statistics.median(bench.trainer_cpu) / statistics.median(bench.bare_cpu)
    print(
        f"config: batch {args.batch_size}, resolution {args.resolution} "
        f"({args.resolution // 8}x{args.resolution // 8} latents), mixed_precision {args.mixed_precision}, "
        f"LoRA rank {LORA_RANK}, max_grad_norm {config.max_grad_norm:g}, optimizer {bench.seen.get('optimizer')}"
    )
    if args.trainer_args:
        print(f"extra trainer arguments: {' '.join(args.trainer_args)}")
    print(
        f"method: {args.warmup} warm-up + {measured} measured steps per loop, "
        f"interleaved in chunks of {args.chunk}"
    )
    print(
        f"torch threads: {threads_at_start} at start, {bench.seen.get('threads')} in the trainer loop "
        f"(os.cpu_count()={os.cpu_count()}); tracemalloc in loop: {bench.seen.get('tracemalloc')}; "
        f"anomaly mode in loop: {bench.seen.get('anomaly')}"
    )
    print(
        f"import simpletuner.training.trainer: {import_seconds:.2f} s "
        f"(pulls in: {', '.join(heavy) or 'nothing heavy'}); trainer start-up to first step: {startup:.2f} s"
    )
    for name, times, cpu in (
        ("trainer step", bench.trainer_times, bench.trainer_cpu),
        ("bare step", bench.bare_times, bench.bare_cpu),
    ):
        median, mean = _ms(times)
        print(
            f"{name + ':':<13} median {median:.2f} ms, mean {mean:.2f} ms wall; "
            f"median {statistics.median(cpu) * 1e3:.2f} ms process CPU ({len(times)} steps)"
        )
    print(f"cross-checks: median of per-pair ratios {paired:.4f}; CPU-time ratio {cpu_ratio:.4f}")
    print(f"step_time_ratio: {ratio:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
