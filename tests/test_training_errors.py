"""User mistakes met at start-up: one line saying what to do, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simpletuner.tools.demo_data import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def _train(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _backend(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "multidatabackend.json"
    path.write_text(
        json.dumps(
            [
                {"id": "pics", "type": "local", "instance_data_dir": str(data_dir), "cache_dir_vae": str(tmp_path / "vae"),
                 "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
                {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
                 "cache_dir": str(tmp_path / "text")},
            ]
        ),
        encoding="utf-8",
    )
    return path


def _flags(model: Path, backend: Path, *extra: str) -> list[str]:
    return [
        "--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
        "--data_backend_config", str(backend), "--output_dir", "out", "--max_train_steps", "1",
        "--mixed_precision", "no", *extra,
    ]


def _assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@pytest.mark.slow
def test_data_folder_without_images(tmp_path: Path, tiny_sdxl: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = _train(tmp_path, *_flags(tiny_sdxl, _backend(tmp_path, empty)))
    _assert_user_error(result, "dataset 'pics'", "no usable images")


@pytest.mark.slow
def test_every_bucket_smaller_than_the_batch(tmp_path: Path, tiny_sdxl: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=6)
    result = _train(tmp_path, *_flags(tiny_sdxl, _backend(tmp_path, data), "--train_batch_size", "4"))
    _assert_user_error(result, "pics")
    assert "batch" in result.stderr


def test_model_folder_without_model_index(tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=6)
    not_a_model = tmp_path / "not_a_model"
    (not_a_model / "unet").mkdir(parents=True)
    result = _train(tmp_path, *_flags(not_a_model, _backend(tmp_path, data)))
    _assert_user_error(result, "model_index.json", str(not_a_model))
    assert not (tmp_path / "out").exists(), "a failed start must not create the output folder"


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(tmp_path: Path, tiny_sdxl: Path) -> None:
    import re

    import torch
    from safetensors.torch import load_file

    data = make_demo_dataset(tmp_path / "data", count=8, sizes=((64, 64),))
    # At this rate the loss turns NaN after a few steps (step 4 with seed 0).  Checkpoints
    # every 3 steps, so the step it happens at is no checkpoint step: only the loss
    # check can stop it there (the weight check runs at checkpoint steps alone).
    interval = 3
    result = _train(tmp_path, *_flags(tiny_sdxl, _backend(tmp_path, data), "--max_train_steps", "40",
                                     "--checkpointing_steps", str(interval), "--learning_rate", "1e4",
                                     "--max_grad_norm", "0", "--optimizer", "optimi-sgd", "--train_batch_size", "2",
                                     "--seed", "0"))
    _assert_user_error(result, "loss became", "--resume_from_checkpoint latest")
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    step = int(re.search(r"at step (\d+)", error).group(1))
    assert step > interval and step % interval != 0, f"the NaN must come between checkpoints: {error}"
    checkpoints = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints][-1] == f"checkpoint-{step // interval * interval}", checkpoints
    last = load_file(checkpoints[-1] / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values()), "the last checkpoint holds non-finite weights"
