"""The streaming start for Hugging Face datasets: with size columns the plan needs no image, and with
--vae_cache_ondemand training starts before any latent exists, yet trains exactly what a pre-cached run does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from family_harness import train_in_process
from test_data_huggingface import _entry, _parquet
import simpletuner.training.trainer as trainer_module

FLAGS = ("--train_batch_size", "1", "--max_train_steps", "3", "--learning_rate", "1e-3", "--lora_rank", "4")


def _latents(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "cache" / "shards").rglob("*.safetensors")}


@pytest.mark.slow
def test_a_sized_huggingface_dataset_trains_before_its_latents_exist_and_like_a_cached_run(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    shards = _parquet(tmp_path / "shards")
    (tmp_path / "mdb.json").write_text(json.dumps([
        {**_entry(tmp_path, shards, width_column="w", height_column="h"), "id": "shards",
         "cache_dir_vae": str(tmp_path / "cache" / "shards")},
        {"id": "text", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "cache" / "text")}]))
    present_at_step: list[int] = []
    real_collate = trainer_module.collate

    def collate(samples, lookup, family, dropped=None, **options):
        present_at_step.append(len(_latents(tmp_path)))  # latents on disk before this batch was collated
        return real_collate(samples, lookup, family, dropped, **options)

    monkeypatch.setattr(trainer_module, "collate", collate)
    streamed = train_in_process(tmp_path, tiny_sdxl, "sdxl", *FLAGS, "--vae_cache_ondemand", output_name="streamed")
    assert present_at_step == [0, 1, 2]  # the first step ran with no latent cached; each batch added its own
    monkeypatch.setattr(trainer_module, "collate", real_collate)

    shutil.move(tmp_path / "cache" / "shards", tmp_path / "streamed-latents")
    # One image per VAE call, as on-demand encoding at batch size 1 does: a convolution's float rounding
    # on CPU depends on the batch it runs in (about 1e-6 here), and the claim is bitwise equality.
    cached = train_in_process(tmp_path, tiny_sdxl, "sdxl", *FLAGS, "--vae_batch_size", "1", output_name="cached")
    assert len(_latents(tmp_path)) == 4  # the pre-encoding pass encoded every row before step 1
    expected = load_file(cached / "pytorch_lora_weights.safetensors")
    actual = load_file(streamed / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
