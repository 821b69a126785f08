"""Helpers for the cache tests: watch what the trainer batches, find an image's cache entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Seen:
    """One batch as the trainer built it (before moving it to the device)."""

    epoch: int
    samples: list
    batch: dict[str, torch.Tensor]
    dropped: list[bool]


def record_batches(monkeypatch: Any) -> list[Seen]:
    """Make in-process Trainer runs append every batch they train on to the returned list."""
    import simpletuner.training.trainer as trainer_module

    seen: list[Seen] = []
    current_epoch = [0]
    real_loss, real_collate = trainer_module.Trainer._loss, trainer_module.collate

    def loss(self: Any, samples: list) -> torch.Tensor:
        current_epoch[0] = self.sampler.epoch
        return real_loss(self, samples)

    def collate(samples: list, lookup: Any, family: Any, dropped: Any = None, **options: Any) -> dict[str, torch.Tensor]:
        batch = real_collate(samples, lookup, family, dropped, **options)
        seen.append(Seen(current_epoch[0], list(samples), batch, list(dropped or [False] * len(samples))))
        return batch

    monkeypatch.setattr(trainer_module.Trainer, "_loss", loss)
    monkeypatch.setattr(trainer_module, "collate", collate)
    return seen


def planned_latent_keys(root: Path, model: Path, family_name: str, *flags: str) -> dict[str, str]:
    """relative path -> latent cache key of each image, planned as ``train_in_process`` plans it."""
    from simpletuner.caching.latents import latent_keys
    from simpletuner.config.loader import load_config
    from simpletuner.data.pipeline import load_backends, prepare_training_data
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    argv = ["--model_family", family_name, "--pretrained_model_name_or_path", str(model),
            "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / "output"),
            "--mixed_precision", "no", "--seed", "0", *flags]
    config = load_config(argv, env={}, cwd=root)
    family = get_family(family_name, config)
    source = ModelSource.from_config(config, family)
    data = prepare_training_data(config, load_backends(config), show_progress=False)
    samples = data.all_samples()
    keys = latent_keys(samples, source.identity("vae"), family.latent_normalisation)
    return {sample.record.relative_path: key for sample, key in zip(samples, keys)}


def log_text(caplog: Any) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)
