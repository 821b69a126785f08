"""Run set-up that is not model-specific: accelerator, dtype, saved config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from simpletuner.config.model import redacted_values

RUN_CONFIG_FILE = "training_config.json"


def training_dtype(config: Any) -> torch.dtype:
    """dtype of the frozen weights and cached inputs; adapters stay in fp32."""
    return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]


def tracker_names(config: Any) -> list[str]:
    return [name for name in (config.report_to or []) if name != "none"]


def build_accelerator(config: Any, output_dir: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir.mkdir(parents=True, exist_ok=True)
    logging_dir = output_dir / config.logging_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=tracker_names(config) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logging_dir)),
    )
    if tracker_names(config):
        init_kwargs = {}
        if config.tracker_run_name:
            init_kwargs = {name: {"name": config.tracker_run_name} for name in ("wandb", "comet_ml")}
        accelerator.init_trackers(
            config.tracker_project_name, config=tracker_hparams(config), init_kwargs=init_kwargs
        )
    return accelerator


def tracker_hparams(config: Any) -> dict[str, Any]:
    """Scalar, redacted option values; trackers reject lists and None."""
    values = {}
    for name, value in redacted_values(config).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if isinstance(value, (int, float, str, bool)):
            values[name] = value
    return values


def write_run_config(config: Any, output_dir: Path) -> None:
    """Save the resolved options (secrets redacted) beside the weights."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_CONFIG_FILE).write_text(
        json.dumps(redacted_values(config), indent=2, sort_keys=True), encoding="utf-8"
    )
