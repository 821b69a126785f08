"""--vae_cache_ondemand: training starts with an empty latent cache and ends with a complete one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cache_helpers import log_text
from family_harness import train_in_process, write_two_class_project
import simpletuner.training.trainer as trainer_module

FLAGS = ("--train_batch_size", "2", "--max_train_steps", "4", "--learning_rate", "1e-3")


def _entries(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "cache" / "vae").rglob("*.safetensors")}


@pytest.mark.slow
def test_ondemand_starts_empty_trains_like_the_cached_run_and_fills_the_cache(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch, caplog
) -> None:
    root = write_two_class_project(tmp_path, per_class=4)
    cached_at_step: list[int] = []
    real_collate = trainer_module.collate

    def collate(samples, lookup, family, dropped=None, **options):
        cached_at_step.append(len(_entries(root)))  # entries present before this batch was collated
        return real_collate(samples, lookup, family, dropped, **options)

    monkeypatch.setattr(trainer_module, "collate", collate)
    ondemand = train_in_process(root, tiny_sdxl, "sdxl", *FLAGS, "--vae_cache_ondemand", output_name="ondemand")
    assert cached_at_step == [0, 2, 4, 6]  # nothing before step 1; each batch added its own two
    made = _entries(root)
    assert len(made) == 8  # complete afterwards: one entry per image
    monkeypatch.setattr(trainer_module, "collate", real_collate)

    # The same run with every latent encoded before training, from an empty cache.
    shutil.move(root / "cache" / "vae", root / "ondemand_vae")
    precached = train_in_process(root, tiny_sdxl, "sdxl", *FLAGS, output_name="precached")
    expected = load_file(precached / "pytorch_lora_weights.safetensors")
    actual = load_file(ondemand / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert {name: load_file(path)["latent"].tolist() for name, path in _entries(root).items()} == {
        name: load_file(root / "ondemand_vae" / path.relative_to(root / "cache" / "vae"))["latent"].tolist()
        for name, path in _entries(root).items()
    }

    # The entries on-demand encoding wrote are the pre-encoding pass's own: a later run reuses them all.
    shutil.rmtree(root / "cache" / "vae")
    shutil.move(root / "ondemand_vae", root / "cache" / "vae")
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2", output_name="again")
    assert "latent cache: 8 reused, 0 encoded" in log_text(caplog)


def test_a_single_read_outside_a_batch_encodes_too(tmp_path: Path) -> None:
    """The held-out evaluation reads latents one by one, not through collate."""
    from simpletuner.caching.store import TensorStore
    from simpletuner.data.records import ImageRecord, TrainingSample
    from simpletuner.training.batches import CacheLookup
    from simpletuner.training.ondemand_latents import OnDemandLatents

    record = ImageRecord("/d/a.png", "a.png", 64, 64, 100, 1, "a photo")
    sample = TrainingSample("d", record, (64, 64), (64, 64), (0, 0), (64, 64))
    store = TensorStore(tmp_path / "latents")
    lookup = CacheLookup({"d": store}, {}, "vae", "text", "norm")
    calls = []

    def encode(vae, pixels, generators):
        calls.append(len(pixels))
        return torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators])

    lookup.ondemand = OnDemandLatents(lambda: "vae", encode, lambda s: torch.zeros(3, 64, 64), batch_size=4)
    latent = lookup.latents(sample)
    assert calls == [1] and store.is_intact(lookup.latent_key(sample))
    assert torch.equal(store.load(lookup.latent_key(sample))["latent"], latent)
