"""Saving and restoring everything a resumed run needs to continue exactly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from simpletuner.errors import ConfigError
from simpletuner.training.checkpoint import (
    TRAINER_STATE_FILE,
    capture_rng_state,
    latest_checkpoint,
    read_json,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
    write_json,
)

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "lr_scheduler.pt"
RNG_FILE = "rng_state.pt"
SAMPLER_FILE = "sampler.json"
EMA_FILE = "ema.pt"


def resolve_resume_path(config: Any, output_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from, or None to start fresh."""
    remove_partial_checkpoints(output_dir)
    target = config.resume_from_checkpoint
    if not target:
        return None
    if target == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet; starting fresh", output_dir)
        return found
    path = Path(target)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise ConfigError(f"--resume_from_checkpoint={target}: not a complete checkpoint folder")
    return path


def checkpoint_seed(path: Path) -> int:
    return int(read_json(path / TRAINER_STATE_FILE)["seed"])


def save_training_state(trainer: Any) -> Optional[Path]:
    """Write checkpoint-<step> (main process only) and prune old ones."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    # Every rank draws its own noise, so every rank's random state is saved;
    # gathering is collective, hence before the main-process-only part.
    rng_states = _gather_from_ranks(accelerator, capture_rng_state(trainer.generator))
    if not accelerator.is_main_process:
        return None
    # The plain module: a compiled one (TRAINING_DYNAMO_BACKEND) prefixes every key with _orig_mod.
    denoiser = accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)

    def write_parts(folder: Path) -> None:
        trainer.trainable.save_state(denoiser, folder)
        torch.save(trainer.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        torch.save(trainer.lr_scheduler.state_dict(), folder / SCHEDULER_FILE)
        torch.save({"per_rank": rng_states}, folder / RNG_FILE)
        write_json(folder / SAMPLER_FILE, trainer.sampler.state_dict())
        if trainer.ema is not None:
            torch.save(trainer.ema.state_dict(), folder / EMA_FILE)
        write_json(folder / TRAINER_STATE_FILE, trainer.state.state_dict())

    path = save_checkpoint(
        trainer.output_dir, trainer.state.global_step, write_parts, trainer.config.checkpoints_total_limit
    )
    logger.info("saved checkpoint %s", path)
    return path


def load_training_state(trainer: Any, path: Path) -> None:
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)
    trainer.trainable.load_state(denoiser, path)
    trainer.optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=False))
    trainer.lr_scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=False))
    trainer.sampler.load_state_dict(read_json(path / SAMPLER_FILE))
    if trainer.ema is not None:
        if not (path / EMA_FILE).is_file():
            raise ConfigError(f"{path} has no EMA weights; it was saved without --use_ema")
        trainer.ema.load_state_dict(torch.load(path / EMA_FILE, weights_only=False))
    trainer.state.load_state_dict(read_json(path / TRAINER_STATE_FILE))
    _restore_this_ranks_rng(trainer, torch.load(path / RNG_FILE, weights_only=False)["per_rank"])
    logger.info("resumed from %s at step %d", path, trainer.state.global_step)


def _gather_from_ranks(accelerator: Any, value: Any) -> list:
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def _restore_this_ranks_rng(trainer: Any, per_rank: list) -> None:
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    if len(per_rank) == world:
        restore_rng_state(per_rank[rank], trainer.generator)
        return
    # A different process count also reshuffles the sampler's shares, so the
    # run cannot repeat the uninterrupted one anyway; give each rank distinct
    # draws that still depend only on the checkpoint.
    logger.warning(
        "checkpoint was written by %d process(es), resuming with %d: random draws will differ "
        "from an uninterrupted run", len(per_rank), world,
    )
    restore_rng_state(per_rank[rank % len(per_rank)], trainer.generator)
    trainer.generator.manual_seed(trainer.state.seed + trainer.state.global_step * world + rank)
