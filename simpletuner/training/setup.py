"""Run set-up that is not model-specific: accelerator, dtype, saved config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from simpletuner.config.environment import dynamo_backend, where_set
from simpletuner.config.model import redacted_values
from simpletuner.errors import ConfigError

RUN_CONFIG_FILE = "training_config.json"


def training_dtype(config: Any) -> torch.dtype:
    """dtype of the frozen weights and cached inputs; adapters stay in fp32."""
    return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]


def tracker_names(config: Any) -> list[str]:
    return [name for name in (config.report_to or []) if name != "none"]


def build_accelerator(config: Any, output_dir: Path, env: Optional[Mapping[str, str]] = None) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from simpletuner.training.rank_health import process_group_kwargs

    # Checked before the output folder exists, so a typo leaves nothing behind.
    env = os.environ if env is None else env
    try:
        backend = dynamo_backend(env)
    except ConfigError as error:
        raise ConfigError(f"{error}{where_set('TRAINING_DYNAMO_BACKEND', env)}") from None
    # Unset leaves compilation to accelerate's own settings (accelerate launch/config).
    compile_settings = {} if backend is None else {"dynamo_backend": backend}
    from simpletuner.distributed.deepspeed import deepspeed_plugin

    plugin = deepspeed_plugin(config)  # --deepspeed_config (GPU only); its file is checked here
    if plugin is not None:
        compile_settings["deepspeed_plugin"] = plugin
    output_dir.mkdir(parents=True, exist_ok=True)
    logging_dir = output_dir / config.logging_dir
    accelerator = Accelerator(
        cpu=_distributed_without_accelerator(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=tracker_names(config) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logging_dir)),
        kwargs_handlers=[process_group_kwargs(config)],
        **compile_settings,
    )
    if tracker_names(config):
        accelerator.init_trackers(
            config.tracker_project_name,
            config=tracker_hparams(config),
            init_kwargs=tracker_init_kwargs(config, logging_dir),
        )
    return accelerator


def _distributed_without_accelerator() -> bool:
    """Several processes on a machine with no GPU: ask accelerate for gloo.

    accelerate only sets up CPU processes as one group when told ``cpu=True``;
    otherwise each process of ``accelerate launch --multi_gpu`` would train
    alone on the whole dataset.
    """
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def tracker_init_kwargs(config: Any, logging_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker start-up arguments: run names, and where local files go.

    comet_ml is told not to parse the command line or upload source code:
    either could carry a secret given as a flag, and the logged options are
    already the redacted ones.  Its automatic metric logging is off because it
    would also copy every TensorBoard scalar, logging each metric twice, and
    so is its error reporting to Sentry.
    """
    kwargs: dict[str, dict[str, Any]] = {}
    names = tracker_names(config)
    if "wandb" in names:
        logging_dir.mkdir(parents=True, exist_ok=True)
        kwargs["wandb"] = {"dir": str(logging_dir), "name": config.tracker_run_name}
    if "comet_ml" in names:
        # comet_ml reports its own errors (with environment details) to Sentry
        # for half its users, chosen at random; a trainer should not phone home
        # unasked.  Read at import; a user's own setting wins.
        os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        import comet_ml

        kwargs["comet_ml"] = {
            "experiment_config": comet_ml.ExperimentConfig(
                name=config.tracker_run_name, parse_args=False, log_code=False, log_git_metadata=False,
                log_git_patch=False, auto_metric_logging=False,
            )
        }
    return kwargs


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
