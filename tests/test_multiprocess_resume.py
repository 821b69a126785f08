"""Two training processes: a resumed run repeats the uninterrupted one bitwise.

Each rank draws its own noise and timesteps from its own generator, so a
checkpoint must hold every rank's random state; with only rank 0's, rank 1
would repeat rank 0's draws after a resume and the weights would differ.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.tools.demo_data import make_demo_dataset
from simpletuner.training.state_files import read_state
from train_sh import run_train_sh, write_json

pytestmark = pytest.mark.slow


def _project(root: Path, model: Path) -> Path:
    make_demo_dataset(root / "data", count=8)
    write_json(root / "config" / "multidatabackend.json", [
        {"id": "shapes", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "resolution_type": "pixel_area",
         "crop": True, "crop_style": "center", "crop_aspect": "square"},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ])
    write_json(root / "config" / "config.json", {
        "--model_family": "sdxl", "--pretrained_model_name_or_path": str(model),
        "--data_backend_config": "config/multidatabackend.json", "--output_dir": "output",
        "--model_type": "lora", "--lora_rank": 4, "--learning_rate": 1e-3, "--train_batch_size": 1,
        "--max_train_steps": 6, "--checkpointing_steps": 3, "--seed": 11, "--mixed_precision": "no",
        "--report_to": "none",
    })
    (root / "config" / "config.env").write_text("TRAINING_NUM_PROCESSES=2\n", encoding="utf-8")
    return root


def test_two_process_resume_is_bitwise(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, tiny_sdxl)
    first = run_train_sh(root)
    assert "x 2 process(es)" in first.stderr, first.stderr[-3000:]
    # Only the main process holds the output folder's lock; rank 1 is not refused, and the lock is gone after.
    assert "in use by another training run" not in first.stderr
    assert not (root / "output" / ".simpletuner.lock").exists()

    saved = read_state(root / "output" / "checkpoint-3" / "rng_state.safetensors")["per_rank"]
    assert len(saved) == 2
    assert not torch.equal(saved[0]["trainer_generator"], saved[1]["trainer_generator"])

    shutil.copytree(root / "output" / "checkpoint-3", root / "resumed" / "checkpoint-3")
    second = run_train_sh(root, "--output_dir", "resumed", "--resume_from_checkpoint", "latest")
    assert "at step 3" in second.stderr
    expected = load_file(root / "output" / "pytorch_lora_weights.safetensors")
    actual = load_file(root / "resumed" / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
