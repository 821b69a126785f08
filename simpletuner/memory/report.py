"""The estimate for a run: computed, printed as start-up lines, checked against free memory."""

from __future__ import annotations

from typing import Any, Optional

import torch

from simpletuner.errors import ConfigError, UserError
from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.memory.estimate import MemoryEstimate, estimate_memory
from simpletuner.memory.precision import quantised_weight_bytes

GIB = 2**30


def estimate_for_run(config: Any, family: ModelFamily, source: ModelSource, bucket: tuple[int, int]) -> Optional[MemoryEstimate]:
    """The estimate at the run's precision, adapter, optimizer and batch, for ``bucket`` (width, height)."""
    from simpletuner.training.setup import training_dtype
    from simpletuner.training.trainable import trainable_for

    frozen_dtype = trainable_for(config, family).frozen_dtype(training_dtype(config))
    quantised = quantised_weight_bytes(config.base_model_precision)
    return estimate_memory(config, family, source, bucket, frozen_dtype, quantised)


def size(count: int) -> str:
    """Bytes in words: GiB above one, else MiB."""
    if count >= GIB:
        return f"{count / GIB:.1f} GiB"
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


def _parameters(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f} B"
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def summary_lines(estimate: Optional[MemoryEstimate], config: Any) -> list[str]:
    """What the start-up summary (and --estimate_memory) prints."""
    if estimate is None:
        return ["memory estimate: not available (the model's config and safetensors files are not on this machine)"]
    width, height = estimate.bucket
    lines = [f"memory estimate (batch {estimate.batch_size} at {width}x{height}, from file headers; no weights read):"]
    lines.append("  parameters: " + ", ".join(
        f"{name} {_parameters(c.parameters)} ({size(c.stored_bytes)} as stored)" for name, c in estimate.components.items()))
    lines.append(f"  loading: {size(estimate.loading)} of system RAM (denoiser at its frozen precision)")
    lines.append(f"  caching: {size(estimate.caching)} (text encoders as stored, VAE in fp32)")
    items = " + ".join(f"{name} {size(count)}" for name, count in estimate.training.items())
    lines.append(f"  training: {size(estimate.training_total)} = {items}")
    if estimate.activations is not None:
        used = "with" if estimate.gradient_checkpointing else "without"
        lines.append(
            f"  activations: {size(estimate.activations.without_checkpointing)} without gradient checkpointing, "
            f"{size(estimate.activations.with_checkpointing)} with (this run: {used})")
    encoders = estimate.text_encoders
    if encoders is None and getattr(config, "train_text_encoder", False):
        lines.append("  text encoders (trained): not estimated (their config or tokenizer files are not on this "
                     "machine); the training figure leaves them out")
    if encoders is not None:
        lines.append(
            f"  text encoders (trained, on the device throughout): {size(encoders.total)} = weights "
            f"{size(encoders.weights)} + gradients {size(encoders.gradients)} + optimizer state "
            f"{size(encoders.optimizer_state)} + activations {size(encoders.activations)} "
            f"({_parameters(encoders.trained_parameters)} trained parameters)")
    for name, count in estimate.in_ram.items():
        lines.append(f"  {name}: {size(count)} of system RAM")
    lines.append(f"  peak: {size(estimate.device_peak)} on the training device")
    return lines


def available_memory(device: torch.device, limit_gb: Optional[float]) -> tuple[int, str]:
    """Bytes the run may use on ``device`` and what that figure is."""
    if limit_gb is not None:
        return int(limit_gb * GIB), "--memory_limit_gb"
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free memory on {device}"
    import psutil

    return psutil.virtual_memory().available, "available system RAM"


def required_memory(estimate: MemoryEstimate, device: torch.device) -> int:
    """Bytes the device must hold; on the CPU, system RAM holds everything."""
    if device.type == "cpu":
        return max(estimate.loading, estimate.device_peak + sum(estimate.in_ram.values()))
    return estimate.device_peak


def check_memory(config: Any, family: ModelFamily, source: ModelSource, counts: dict,
                 device: torch.device, log: bool = True, shards: int = 1) -> None:
    """The trainer's start-up step: log the estimate for the largest real bucket, then check it fits.

    ``shards``: processes the weights, gradients and optimizer state are split
    over (--fsdp_enable); each process needs about that share of them.
    """
    import logging

    bucket = largest_bucket(counts) or planned_bucket(config)
    try:
        estimate = estimate_for_run(config, family, source, bucket)
        if estimate is not None and shards > 1:
            from simpletuner.distributed.fsdp import sharded_estimate

            estimate = sharded_estimate(estimate, shards)
    except UserError:
        raise
    except Exception as error:  # an estimate that cannot be made must not stop a run that can
        logging.getLogger(__name__).warning("memory estimate failed (%s: %s); not checked",
                                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return
    if log:
        for line in summary_lines(estimate, config):
            logging.getLogger(__name__).info(line)
    check_fits(estimate, config, device)


def check_fits(estimate: Optional[MemoryEstimate], config: Any, device: torch.device) -> None:
    """Refuse, before any weight is loaded, a run the estimate says cannot fit."""
    if estimate is None or config.skip_memory_check:
        return
    needed = required_memory(estimate, device)
    available, what = available_memory(device, config.memory_limit_gb)
    if needed > available:
        raise ConfigError(
            f"the memory estimate ({size(needed)}) exceeds {what} ({size(available)}); lower --train_batch_size "
            "or the resolution, turn on --gradient_checkpointing or quantise with --base_model_precision "
            "(see --estimate_memory), or pass --skip_memory_check to start anyway"
        )


def planned_bucket(config: Any) -> tuple[int, int]:
    """The largest training size the config asks for, before any image is scanned:
    each dataset's resolution (pixels) or, without a dataset config, --resolution.
    Aspect buckets keep about the same area, so a square of that edge stands in."""
    from simpletuner.data.size_units import resolve_size_units

    if config.data_backend_config:
        from simpletuner.data.pipeline import DATASET_DEFAULT_OPTIONS
        from simpletuner.data.schema import load_data_backend_config

        defaults = {name: getattr(config, name, None) for name in DATASET_DEFAULT_OPTIONS}
        datasets = load_data_backend_config(config.data_backend_config, defaults).image_datasets
        if datasets:
            edge = max(d.resolution for d in datasets)
            return edge, edge
    # The same unit rules and bounds a dataset's size keys get (1.0 with a pixel
    # type, 1024 read as megapixels), so a bad --resolution is a ConfigError here too.
    sizes, _ = resolve_size_units({"resolution": config.resolution, "resolution_type": config.resolution_type},
                                  "the options", inherited=("resolution",))
    return sizes["resolution"], sizes["resolution"]


def largest_bucket(counts: dict[str, dict[tuple[int, int], int]]) -> Optional[tuple[int, int]]:
    """The largest-area (width, height) bucket holding images, from the data report."""
    buckets = [bucket for per_dataset in counts.values() for bucket, images in per_dataset.items() if images]
    return max(buckets, key=lambda b: b[0] * b[1]) if buckets else None
