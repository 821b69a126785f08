"""Disk space for what the run will write, estimated from the meta-device skeleton (no weights).

The same figures the trainer's own warning uses (training/disk_space.py):
one checkpoint (trained weights, optimizer state, EMA copy) times the number
on disk at once, plus the final weights; here the trained weights are counted
on the skeleton and the optimizer state from its per-parameter size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.memory.precision import optimizer_state_bytes
from simpletuner.training.disk_space import SpaceNeeded, checkpoints_at_once, format_bytes, free_bytes, space_warning

FP32 = 4


def space_needed(config: Any, family: ModelFamily, source: ModelSource, total_steps: int) -> Optional[SpaceNeeded]:
    """What the run will write into --output_dir; None when the model's config is not on this machine.

    The trained weights are fp32; a LoRA checkpoint holds them twice (the
    training state and its LoRA-file copy), pissa/olora final LoRAs are of
    twice the rank, and a full fine-tune's final folder also holds the base
    pipeline's other components (see training/trainable.py).
    """
    from simpletuner.memory.skeleton import build_skeleton
    from simpletuner.training.setup import training_dtype
    from simpletuner.training.trainable import trainable_for

    frozen_dtype = trainable_for(config, family).frozen_dtype(training_dtype(config))
    skeleton = build_skeleton(family, source, config, frozen_dtype)
    if skeleton is None:
        return None
    weights = skeleton.trained_parameters * FP32
    averaged = weights if config.use_ema else 0
    optimizer = int(skeleton.trained_parameters * optimizer_state_bytes(config.optimizer))
    if config.model_type == "full":
        checkpoint, final = weights, weights + _other_components(source, family)
    elif config.lora_type == "lycoris":
        checkpoint, final = weights, weights
    else:
        doubled = config.lora_init_type in ("pissa", "olora")
        checkpoint, final = 2 * weights, (2 if doubled else 1) * weights
    return SpaceNeeded(checkpoint + optimizer + averaged, checkpoints_at_once(config, total_steps, 0), final + averaged)


def _other_components(source: ModelSource, family: ModelFamily) -> int:
    base = Path(source.base).expanduser()
    if not base.is_dir():
        return 0
    skipped = base / family.denoiser_component
    return sum(f.stat().st_size for f in base.rglob("*") if f.is_file() and skipped not in f.parents)


def space_lines(output_dir: Path, needed: Optional[SpaceNeeded]) -> tuple[list[str], Optional[str]]:
    """(lines to print, the problem when the disk is too small)."""
    free = free_bytes(output_dir)
    if needed is None:
        return [f"--output_dir={output_dir}: {format_bytes(free)} free; what the run writes is not estimated "
                "(the model's config is not on this machine)"], None
    lines = [f"--output_dir={output_dir}: {format_bytes(free)} free; the run will write about "
             f"{format_bytes(needed.total)} ({needed.checkpoints_at_once} checkpoint(s) of "
             f"{format_bytes(needed.checkpoint_bytes)} at once, plus {format_bytes(needed.final_bytes)} of final weights)"]
    return lines, space_warning(output_dir, needed)
