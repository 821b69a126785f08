"""Checkpoints survive SIGKILL at any moment, and resuming loses nothing.

Training checkpoints every 2 steps (keeping 2), so random kills land during
steps, saves and prunes alike.  After every kill each visible checkpoint must
be complete and loadable; after the last kill the run finishes, and its
weights equal those of a run that was never stopped.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.tools.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
KILLS = 10
STEPS = 60
TRAINING_STARTED = "text-embed cache:"  # logged once caches are ready, just before the loop


def _project(root: Path, model: Path) -> Path:
    make_demo_dataset(root / "data", count=8, sizes=((64, 64),))
    (root / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    (root / "config.json").write_text(json.dumps({
        "model_family": "sdxl", "pretrained_model_name_or_path": str(model), "data_backend_config": "mdb.json",
        "max_train_steps": STEPS, "checkpointing_steps": 2, "checkpoints_total_limit": 2,
        "train_batch_size": 2, "learning_rate": "1e-3", "seed": 3, "mixed_precision": "no",
        "resume_from_checkpoint": "latest",
    }))
    return root


def _start(root: Path, output: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("ENV", "CONFIG_BACKEND")}
    env["CONFIG_PATH"] = str(root / "config.json")
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--output_dir", output],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log.read_text()[-2000:]}")


def _assert_checkpoints_complete(output: Path) -> list[int]:
    steps = []
    for folder in sorted(output.glob("checkpoint-*")):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert folder.name == f"checkpoint-{state['global_step']}"
        load_file(folder / "trainable.safetensors")
        torch.load(folder / "optimizer.pt", weights_only=False)
        torch.load(folder / "lr_scheduler.pt", weights_only=False)
        torch.load(folder / "rng_state.pt", weights_only=False)
        json.loads((folder / "sampler.json").read_text())
        steps.append(state["global_step"])
    return steps


def test_random_sigkills_never_lose_a_checkpoint(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, tiny_sdxl)
    reference = _start(root, "reference", tmp_path / "reference.log")
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    rng = random.Random(1234)
    kills, attempt, finished = 0, 0, False
    while not finished:
        newest = max(_assert_checkpoints_complete(root / "killed"), default=None)
        log = tmp_path / f"attempt{attempt}.log"
        process = _start(root, "killed", log)
        attempt += 1
        if kills < KILLS and _wait_for(log, TRAINING_STARTED, process):
            time.sleep(rng.uniform(0.05, 0.6))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        returncode = process.wait(timeout=300)
        _assert_checkpoints_complete(root / "killed")
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        finished = returncode == 0
        if newest is not None and ("resumed from" in text or finished):
            # every resume starts from the newest complete checkpoint
            assert f"checkpoint-{newest} at step {newest}" in text, text[-3000:]
        if not finished:
            assert returncode == -signal.SIGKILL, text[-3000:]
        assert attempt < KILLS + 20, "training never finished"
    assert kills >= KILLS, f"only {kills} kills landed before training finished"

    expected = load_file(root / "reference" / "pytorch_lora_weights.safetensors")
    actual = load_file(root / "killed" / "pytorch_lora_weights.safetensors")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
