"""In-process training runs that keep the Trainer, for the adapter tests.

``family_harness.train_in_process`` returns only the output folder; these
tests also need the trained denoiser still in memory and the exact inputs
and targets of its last steps, so the run is made here the same way and the
Trainer comes back, with what ``record`` captured.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from family_harness import write_two_class_project


@dataclass
class Recorded:
    inputs: list[dict[str, Any]] = field(default_factory=list)  # denoiser kwargs, one per batch
    noisy: list[torch.Tensor] = field(default_factory=list)  # the noisy latents they were built from
    targets: list[torch.Tensor] = field(default_factory=list)  # loss targets, one per batch
    regularisation: list[bool] = field(default_factory=list)  # whether each batch was regularisation data


def write_project(root: Path, regularisation: bool = False, per_class: int = 2) -> Path:
    """The two-class project, its image dataset optionally marked as regularisation data."""
    write_two_class_project(root, per_class=per_class)
    mdb = root / "mdb.json"
    datasets = json.loads(mdb.read_text(encoding="utf-8"))
    datasets[0]["is_regularisation_data"] = regularisation
    mdb.write_text(json.dumps(datasets), encoding="utf-8")
    return root


def write_mixed_project(root: Path, per_class: int = 2) -> Path:
    """Two image datasets of the same pictures: one ordinary, one regularisation data."""
    write_project(root, per_class=per_class)
    shutil.copytree(root / "data", root / "regularisation")
    mdb = root / "mdb.json"
    datasets = json.loads(mdb.read_text(encoding="utf-8"))
    extra = dict(datasets[0], id="regularisation", instance_data_dir=str(root / "regularisation"),
                 cache_dir_vae=str(root / "cache/vae-regularisation"), is_regularisation_data=True)
    mdb.write_text(json.dumps([datasets[0], extra, *datasets[1:]]), encoding="utf-8")
    return root


def write_lycoris_config(root: Path, spec: dict[str, Any], name: str = "lycoris.json") -> Path:
    path = root / name
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def train(root: Path, model: Path, family: str, *flags: str, output_name: str = "output",
          record: bool = False) -> tuple[Any, Recorded]:
    """Run the real Trainer; returns it (denoiser still loaded) and what was recorded."""
    from accelerate.state import AcceleratorState

    import simpletuner.training.trainer as trainer_module
    from simpletuner.config.loader import load_config
    from simpletuner.training.trainer import Trainer

    argv = [
        "--model_family", family, "--pretrained_model_name_or_path", str(model),
        "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / output_name),
        "--mixed_precision", "no", "--seed", "0", "--checkpointing_steps", "100000", *flags,
    ]
    config = load_config(argv, env={}, cwd=root)
    AcceleratorState._reset_state(reset_partial_state=True)  # one process, several runs
    trainer = Trainer(config, show_progress=False)
    recorded = Recorded()
    if not record:
        trainer.run()
        return trainer, recorded
    model_inputs = trainer.family.model_inputs
    weighted_loss = trainer_module.weighted_loss
    loss = trainer._loss

    def recording_loss(samples: list) -> torch.Tensor:
        recorded.regularisation.append(all(sample.is_regularisation for sample in samples))
        return loss(samples)

    def recording_inputs(batch: Any, noisy: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        inputs = model_inputs(batch, noisy, timesteps)
        if noisy.device.type == "meta":  # the memory estimate's shape-only trace, not a training step
            return inputs
        recorded.inputs.append(_clone(inputs))
        recorded.noisy.append(noisy.detach().clone())
        return inputs

    def recording_loss_fn(prediction: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        recorded.targets.append(target.detach().clone())
        return weighted_loss(prediction, target, *args, **kwargs)

    trainer.family.model_inputs = recording_inputs
    trainer._loss = recording_loss
    trainer_module.weighted_loss = recording_loss_fn
    try:
        trainer.run()
    finally:
        trainer_module.weighted_loss = weighted_loss
    return trainer, recorded


def trained_denoiser(trainer: Any) -> torch.nn.Module:
    return trainer.accelerator.unwrap_model(trainer.denoiser).eval()


def output(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The denoiser's raw output tensor for recorded inputs."""
    with torch.no_grad():
        result = denoiser(**inputs)
    return (result.sample if hasattr(result, "sample") else result[0]).float()


def fresh_denoiser(trainer: Any) -> torch.nn.Module:
    """The base model's denoiser as on disk, in fp32."""
    return trainer.family.load_denoiser(trainer.source).float().eval()
