"""Process-wide numeric settings of a run: TF32, CPU threads, and how the
global random state is seeded per process.

These are torch's own process settings (as accelerate's ``set_seed`` is), set
once at the start of a run before any model is built.
"""

from __future__ import annotations

from typing import Any

import torch


def apply_torch_settings(config: Any) -> None:
    """TF32 (--disable_tf32; on by default, as SimpleTuner has it) and --torch_num_threads.

    TF32 only changes NVIDIA GPUs from Ampere on; the flags are set anyway
    so the setting is the same wherever the run's modules end up.
    """
    tf32 = not config.disable_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if config.torch_num_threads is not None:
        torch.set_num_threads(config.torch_num_threads)


def process_seed(seed: int, process_index: int, per_device: bool) -> int:
    """The seed of this process's global random state (--seed_for_each_device adds the rank)."""
    return seed + process_index if per_device else seed


def seed_process(seed: int) -> None:
    """Seed python, numpy and torch (accelerate's set_seed)."""
    from accelerate.utils import set_seed

    set_seed(seed)
