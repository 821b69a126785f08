"""Saving and restoring everything a resumed run needs to continue exactly.

Every part is written without pickle (see ``state_files``), so resuming from a
checkpoint someone else made cannot run code.  Checkpoints from earlier
versions hold ``*.pt`` pickles instead; ``legacy_state`` loads those only as
far as that is safe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

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
from simpletuner.training.disk_space import writing
from simpletuner.training.legacy_state import LEGACY_SUFFIX, read_legacy_part
from simpletuner.training.setup import RUN_CONFIG_FILE, write_run_config
from simpletuner.training.state_files import read_state, write_state

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".safetensors"
OPTIMIZER_PART = "optimizer"
SCHEDULER_PART = "lr_scheduler"
RNG_PART = "rng_state"
EMA_PART = "ema"
SAMPLER_FILE = "sampler.json"


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


def save_training_state(trainer: Any, published: Callable[[Path], None]) -> None:
    """Write checkpoint-<step> and prune old ones; ``published(folder)`` runs on the main process
    once the folder is complete and in place.

    That is now, or for an --fsdp_async_checkpointing write when its background
    write has finished (``ShardedCheckpoints.poll``/``finish``); never for a
    checkpoint that did not land.
    """
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    # Every rank draws its own noise, so every rank's random state is saved;
    # gathering is collective, hence before the main-process-only part.
    rng_states = _gather_from_ranks(accelerator, capture_rng_state(trainer.generator))
    step = trainer.state.global_step
    if getattr(trainer, "sharded_checkpoints", None) is not None:  # --fsdp_enable: every process writes its shards
        with writing(f"checkpoint-{step}", trainer.output_dir):
            trainer.sharded_checkpoints.save(step, trainer.denoiser, trainer.optimizer,
                                             lambda folder: _write_run_parts(trainer, folder, rng_states), published)
        return
    if not accelerator.is_main_process:
        return
    # The plain module: a compiled one (TRAINING_DYNAMO_BACKEND) prefixes every key with _orig_mod.
    denoiser = accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)

    def write_parts(folder: Path) -> None:
        trainer.trainable.save_state(denoiser, folder)
        write_state(state_file(folder, OPTIMIZER_PART), trainer.optimizer.state_dict())
        _write_run_parts(trainer, folder, rng_states)

    with writing(f"checkpoint-{step}", trainer.output_dir):
        path = save_checkpoint(trainer.output_dir, step, write_parts, trainer.config.checkpoints_total_limit)
    logger.info("saved checkpoint %s", path)
    published(path)


def _write_run_parts(trainer: Any, folder: Path, rng_states: list) -> None:
    """Everything but the weights and optimizer: schedule, random states, data position, counters,
    and the options it was made with (the output folder's copy is rewritten by every resumed run)."""
    write_run_config(trainer.config, folder)
    write_state(state_file(folder, SCHEDULER_PART), trainer.lr_scheduler.state_dict())
    write_state(state_file(folder, RNG_PART), {"per_rank": rng_states})
    write_json(folder / SAMPLER_FILE, trainer.sampler.state_dict())
    if trainer.ema is not None:
        write_state(state_file(folder, EMA_PART), trainer.ema.state_dict())
    write_json(folder / TRAINER_STATE_FILE, trainer.state.state_dict())


def state_file(folder: Path, part: str) -> Path:
    return folder / f"{part}{STATE_SUFFIX}"


def has_part(folder: Path, part: str) -> bool:
    return state_file(folder, part).is_file() or (folder / f"{part}{LEGACY_SUFFIX}").is_file()


def read_part(folder: Path, part: str) -> Any:
    """One saved state, from today's format or, where that is safe, an earlier version's pickle."""
    current = state_file(folder, part)
    if current.is_file():
        return read_state(current)
    legacy = folder / f"{part}{LEGACY_SUFFIX}"
    if legacy.is_file():
        return read_legacy_part(legacy)
    raise ConfigError(f"{folder}: {current.name} is missing, so the checkpoint is incomplete; resume from another one")


def load_training_state(trainer: Any, path: Path) -> None:
    if trainer.ema is not None and not has_part(path, EMA_PART):
        raise ConfigError(f"{path} has no EMA weights; it was saved without --use_ema")
    sharded = _check_checkpoint_kind(trainer, path)
    # Every part is read (and checked) before anything is changed.
    optimizer_state = None if sharded else read_part(path, OPTIMIZER_PART)
    scheduler_state = read_part(path, SCHEDULER_PART)
    rng_states = read_part(path, RNG_PART)["per_rank"]
    ema_state = read_part(path, EMA_PART) if trainer.ema is not None else None
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)
    try:
        if sharded:
            trainer.sharded_checkpoints.load(trainer.denoiser, trainer.optimizer, path)
        else:
            trainer.trainable.load_state(denoiser, path)
            trainer.optimizer.load_state_dict(optimizer_state)
        trainer.lr_scheduler.load_state_dict(scheduler_state)
        if ema_state is not None:
            trainer.ema.load_state_dict(ema_state)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{path} does not fit this run ({str(error).splitlines()[0]}); {_how_to_fit(trainer.config, path)}"
        ) from None
    trainer.sampler.load_state_dict(read_json(path / SAMPLER_FILE))
    trainer.state.load_state_dict(read_json(path / TRAINER_STATE_FILE))
    _restore_this_ranks_rng(trainer, rng_states)
    logger.info("resumed from %s at step %d", path, trainer.state.global_step)


# Options a resumed run is expected to change, so naming them would only hide the ones that matter.
_CHANGED_BY_RESUMING = frozenset({"resume_from_checkpoint", "output_dir", "max_train_steps", "num_train_epochs"})
_MOST_NAMED = 6


def _how_to_fit(config: Any, path: Path) -> str:
    """Which options differ from those the checkpoint was saved with (its own copy of them)."""
    import json

    from simpletuner.config.model import redacted_values

    saved_file = path / RUN_CONFIG_FILE
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # an earlier version's checkpoint has no copy
        return "resume it with the options it was saved with"
    # Through JSON so that tuples and lists, as saved, compare equal.
    current = json.loads(json.dumps(redacted_values(config), default=str))
    differing = [f"--{name}={saved[name]} (this run: {current.get(name)})" for name in sorted(saved)
                 if name not in _CHANGED_BY_RESUMING and current.get(name) != saved[name]]
    if not differing:
        return f"resume it with the options it was saved with ({saved_file})"
    named = ", ".join(differing[:_MOST_NAMED])
    more = f" and {len(differing) - _MOST_NAMED} more" if len(differing) > _MOST_NAMED else ""
    return f"it was saved with {named}{more}; resume it with those (all in {saved_file})"


def _check_checkpoint_kind(trainer: Any, path: Path) -> bool:
    """Whether each process wrote its part of ``path`` (FSDP2, DeepSpeed); refused when this run
    would read it the other way."""
    from simpletuner.distributed.dcp import checkpoint_kind

    writer = getattr(trainer, "sharded_checkpoints", None)
    found, wanted = checkpoint_kind(path), writer.kind if writer is not None else "plain"
    if found != wanted:
        option = {"dcp": "--fsdp_enable", "deepspeed": "--deepspeed_config",
                  "plain": "neither --fsdp_enable nor --deepspeed_config"}
        raise ConfigError(f"{path} was saved with {option[found]}; resume it with {option[found]}")
    return found != "plain"


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
