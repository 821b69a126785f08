"""Room on disk for what a run writes, and a clear stop when a write fails.

Before training, :func:`space_warning` compares the free space at
``--output_dir`` with an estimate of what the run will write: a checkpoint
(trained weights, optimizer state, EMA copy) times the number that exist at
once during a save (``--checkpoints_total_limit`` + 1), plus the final
weights.  A fresh optimizer has no state yet; Adam-style optimizers keep two
fp32 moments per weight, which is what is assumed until a resume gives the
real figure.

During the run, :func:`writing` turns a failed write (ENOSPC or any other
OS error) into an :class:`OutputWriteError`: one line saying what could not
be written, how much space is free, which checkpoint is intact and how to
continue.  The caller removes its partial output first.
"""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from safetensors import SafetensorError

from simpletuner.errors import OutputWriteError
from simpletuner.training.checkpoint import latest_checkpoint

ADAM_MOMENTS = 2


@dataclass(frozen=True)
class SpaceNeeded:
    checkpoint_bytes: int
    checkpoints_at_once: int
    final_bytes: int

    @property
    def total(self) -> int:
        return self.checkpoint_bytes * self.checkpoints_at_once + self.final_bytes


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem holding ``folder`` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def tensor_bytes(tensors: Any) -> int:
    """Bytes of every tensor in a (nested) state dict or list."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(tensor_bytes(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(v) for v in tensors)
    return 0


def optimizer_state_bytes(optimizer: Any, parameters: list[torch.Tensor]) -> int:
    """The optimizer's state as it is, or two fp32 moments per weight before its first step."""
    measured = tensor_bytes(list(getattr(optimizer, "state", {}).values()))
    return measured or ADAM_MOMENTS * 4 * sum(p.numel() for p in parameters)


def checkpoints_at_once(config: Any, total_steps: int, start_step: int) -> int:
    """Checkpoints on disk at the peak: the kept ones plus the one being written."""
    saves = total_steps // config.checkpointing_steps - start_step // config.checkpointing_steps
    if config.checkpoints_total_limit:
        return max(0, min(saves, config.checkpoints_total_limit + 1))
    return max(0, saves)


def space_warning(output_dir: Path, needed: SpaceNeeded) -> Optional[str]:
    """One line when ``needed`` does not fit in the free space at ``output_dir``; None when it does."""
    free = free_bytes(output_dir)
    if needed.total <= free:
        return None
    return (
        f"--output_dir={output_dir} has {format_bytes(free)} free, but this run will write about "
        f"{format_bytes(needed.total)} ({needed.checkpoints_at_once} checkpoint(s) of "
        f"{format_bytes(needed.checkpoint_bytes)} at once, plus {format_bytes(needed.final_bytes)} of final "
        "weights); free some space, lower --checkpoints_total_limit, or choose another --output_dir"
    )


@contextmanager
def writing(what: str, output_dir: Path, partial: Optional[Path] = None) -> Iterator[None]:
    """Run a save; a failed write removes ``partial`` and becomes one clear OutputWriteError."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        reason = _write_failure(error)
        if reason is None:
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise OutputWriteError(_failure_message(what, output_dir, reason)) from None


def _write_failure(error: Exception) -> Optional[str]:
    """Why a write failed, in words; None when ``error`` is no I/O failure (then it is a bug)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    # safetensors reports them as "Error while serializing: I/O error: No space left on device (os error 28)"
    found = re.search(r"I/O error: (.+?)(?: \(os error \d+\))?$", str(error))
    return found.group(1) if found else None


def _failure_message(what: str, output_dir: Path, reason: str) -> str:
    last = latest_checkpoint(output_dir)
    if last is None:
        after = "no checkpoint had been saved yet; make room, then run again"
    else:
        after = (f"{last.name}, the last complete checkpoint, is intact; make room, then continue with "
                 "--resume_from_checkpoint latest")
    return f"could not write {what} in {output_dir}: {reason} ({format_bytes(free_bytes(output_dir))} free there); {after}"


def run_space_needed(trainer: Any, total_steps: int) -> SpaceNeeded:
    """What the rest of ``trainer``'s run will write into its output folder."""
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser, keep_torch_compile=False)
    trained = tensor_bytes(list(trainer.trained_parameters))
    averaged = trained if trainer.ema is not None else 0
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    checkpoint = (trainer.trainable.checkpoint_bytes(denoiser)
                  + optimizer_state_bytes(optimizer, trainer.trained_parameters) + averaged)
    final = trainer.trainable.final_bytes(denoiser, trainer.source) + averaged
    return SpaceNeeded(checkpoint, checkpoints_at_once(trainer.config, total_steps, trainer.state.global_step), final)
