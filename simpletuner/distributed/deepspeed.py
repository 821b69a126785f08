"""--deepspeed_config: DeepSpeed through accelerate's DeepSpeed plugin (GPU machines only).

SimpleTuner v1.x users reach full Flux fine-tunes with DeepSpeed ZeRO.  Here
it runs the way accelerate runs it: the plugin is given the user's JSON file
and ``accelerator.prepare`` wraps the denoiser in a DeepSpeed engine.  On a
machine without a GPU it is refused before anything loads
(distributed/rules.py), pointing at --fsdp_enable, which shards the same way
and also runs on the CPU.

ZeRO stages 1 and 2 shard only optimizer state and gradients, so every process
still holds the whole model and the final weights are saved as in a DDP run.
Stage 3 shards the weights too; that is what --fsdp_enable does here, so
stage 3 is refused with a pointer to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from simpletuner.errors import ConfigError

CHECKPOINT_FOLDER = "deepspeed"  # inside checkpoint-<step>/: the engine's own files
_TAG = "state"


def read_deepspeed_config(path: str) -> dict[str, Any]:
    """The JSON file --deepspeed_config names; ConfigError naming it when unusable."""
    file = Path(path).expanduser()
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"--deepspeed_config={path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--deepspeed_config={path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"--deepspeed_config={path}: expected a JSON object of DeepSpeed settings")
    stage = settings.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ConfigError(f"--deepspeed_config={path}: ZeRO stage 3 is not implemented yet (it shards the weights, "
                          "which --fsdp_enable does here); use stage 2, or --fsdp_enable instead")
    return settings


def deepspeed_plugin(config: Any) -> Optional[Any]:
    """accelerate's DeepSpeedPlugin for --deepspeed_config, or None when the option is unset."""
    if not getattr(config, "deepspeed_config", None):
        return None
    settings = read_deepspeed_config(config.deepspeed_config)
    try:
        import deepspeed  # noqa: F401  (accelerate imports it only once prepare runs)
    except ImportError:
        raise ConfigError("--deepspeed_config needs the deepspeed package: pip install deepspeed") from None
    from accelerate.utils import DeepSpeedPlugin

    # The trainer feeds batches itself (no prepared dataloader), so accelerate
    # cannot fill DeepSpeed's "auto" batch size; the run's options do.
    if settings.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        settings["train_micro_batch_size_per_gpu"] = config.train_batch_size
    settings.setdefault("gradient_accumulation_steps", config.gradient_accumulation_steps)
    return DeepSpeedPlugin(hf_ds_config=settings)


def uses_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_engine_state(engine: Any, folder: Path) -> None:
    """Every process writes its ZeRO partition with DeepSpeed's own checkpointing (collective)."""
    engine.save_checkpoint(str(folder / CHECKPOINT_FOLDER), tag=_TAG)


def load_engine_state(engine: Any, folder: Path) -> None:
    """Weights and ZeRO optimizer state from ``save_engine_state``; needs the same number of processes."""
    path, _ = engine.load_checkpoint(str(folder / CHECKPOINT_FOLDER), tag=_TAG, load_lr_scheduler_states=False)
    if path is None:
        raise ConfigError(f"{folder}: no DeepSpeed state in it; resume with the options it was saved with")
