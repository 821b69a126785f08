"""--pretrained_{vae,unet,transformer}_model_name_or_path and their subfolders."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from family_harness import train_in_process, write_two_class_project
from simpletuner.config.loader import load_config
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family


def _source(tmp_path: Path, *flags: str) -> ModelSource:
    config = load_config(["--model_family", "sdxl", "--print_config", "--pretrained_model_name_or_path", "base",
                          *flags], env={}, cwd=tmp_path)
    return ModelSource.from_config(config, get_family("sdxl", config))


def test_overrides_map_components_to_their_folders(tmp_path: Path) -> None:
    source = _source(tmp_path, "--pretrained_vae_model_name_or_path", "fixed-vae",
                     "--pretrained_unet_model_name_or_path", "tuned", "--pretrained_unet_subfolder", "unet")
    assert source.overrides["vae"] == ("fixed-vae", None)  # a VAE repository holds it at its root
    assert source.overrides["unet"] == ("tuned", "unet")
    assert _source(tmp_path, "--pretrained_vae_subfolder", "vae_alt").overrides["vae"] == ("base", "vae_alt")


@pytest.mark.slow
def test_a_separate_vae_folder_is_used_and_invalidates_the_latent_cache(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    other_vae = tmp_path / "other_vae"
    shutil.copytree(tiny_sdxl / "vae", other_vae)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(other_vae)
    with torch.no_grad():
        vae.quant_conv.bias[:4] += 1.0  # a different VAE, visibly
    vae.save_pretrained(other_vae)
    root = write_two_class_project(tmp_path / "project", per_class=4)
    flags = ("--max_train_steps", "1", "--train_batch_size", "2")
    train_in_process(root, tiny_sdxl, "sdxl", *flags)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", *flags, "--pretrained_vae_model_name_or_path", str(other_vae),
                         output_name="output_other_vae")
    assert "8 reused" not in "\n".join(r.getMessage() for r in caplog.records)
    assert "0 reused, 8 encoded" in "\n".join(r.getMessage() for r in caplog.records)
