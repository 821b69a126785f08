"""Checkpoints survive SIGKILL at any moment, and resuming loses nothing.

Training checkpoints every 2 steps (keeping 2).  Each attempt resumes from
the newest checkpoint, and is killed only once it has written a checkpoint of
its own, so every kill costs real progress that the next attempt must restore:
the first and the last kill land while a checkpoint is being written (the
moment its temporary folder appears; at least one must catch it half-written),
the one between them at a random moment within the next two steps (timed from
the uninterrupted run).  After every kill
each visible checkpoint must be complete and loadable; every attempt must
resume from the newest one, each from a later step; after the last kill the
run finishes, and its weights equal those of a run that was never stopped.
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
from simpletuner.training.state_files import read_state
from kill_helpers import newest_step as _newest_step, wait_until as _wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
KILLS = 3  # each attempt starts a process (~5 s): the three moments, no repeats
STEPS = 20  # the last kill lands by step ~12 (2 + 4 + 4 + 2 steps at most); the rest is margin
STATE_PARTS = ("optimizer", "lr_scheduler", "rng_state")


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
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--output_dir", output],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )






def _seconds_between_checkpoints(process: subprocess.Popen, output: Path) -> float:
    """Watch an uninterrupted run: the median time from one checkpoint to the next (two steps)."""
    seen: list[float] = []
    step = 0
    while process.poll() is None:
        if _newest_step(output) > step:
            step = _newest_step(output)
            seen.append(time.monotonic())
        time.sleep(0.01)
    gaps = sorted(b - a for a, b in zip(seen, seen[1:]))
    assert gaps, "the reference run wrote fewer than two checkpoints"
    return gaps[len(gaps) // 2]


def _complete_checkpoints(output: Path) -> list[int]:
    """Steps of the visible checkpoints, each checked complete and loadable."""
    steps = []
    for folder in sorted(output.glob("checkpoint-*")):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert folder.name == f"checkpoint-{state['global_step']}"
        load_file(folder / "trainable.safetensors")
        load_file(folder / "pytorch_lora_weights.safetensors")
        for part in STATE_PARTS:
            read_state(folder / f"{part}.safetensors")
        json.loads((folder / "sampler.json").read_text())
        steps.append(state["global_step"])
    return steps


def test_random_sigkills_never_lose_a_checkpoint(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, tiny_sdxl)
    reference = _start(root, "reference", tmp_path / "reference.log")
    save_interval = _seconds_between_checkpoints(reference, root / "reference")
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    output = root / "killed"
    rng = random.Random(1234)
    kills, mid_save_kills, resumed_at = 0, 0, []
    for attempt in range(KILLS + 1):
        newest = max(_complete_checkpoints(output), default=0)
        log = tmp_path / f"attempt{attempt}.log"
        process = _start(root, "killed", log)
        if attempt < KILLS:
            # Only once this attempt has saved a checkpoint of its own does a kill cost progress.
            _wait_until(lambda: _newest_step(output) > newest, process, log)
            mid_save = attempt != 1
            if mid_save:  # the next save has begun: its temporary folder exists
                _wait_until(lambda: any(output.glob(".checkpoint-*.partial")), process, log)
            else:  # somewhere in the next two steps or the save after them
                time.sleep(rng.uniform(0.0, save_interval))
            process.send_signal(signal.SIGKILL)
            kills += 1
        returncode = process.wait(timeout=300)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        if attempt < KILLS:
            assert returncode == -signal.SIGKILL, f"attempt {attempt} ended by itself:\n{text[-3000:]}"
            if mid_save and any(output.glob(".checkpoint-*.partial")):
                mid_save_kills += 1  # the kill caught a checkpoint half-written
        else:
            assert returncode == 0, text[-3000:]
        _complete_checkpoints(output)
        if attempt > 0:
            # every resume starts from the newest complete checkpoint, after taking over the killed run's lock
            assert f"checkpoint-{newest} at step {newest}" in text, text[-3000:]
            assert "took over the lock" in text, text[-3000:]
            resumed_at.append(newest)

    assert kills == KILLS
    assert resumed_at == sorted(set(resumed_at)) and resumed_at[0] > 0, f"resumes did not progress: {resumed_at}"
    assert len(resumed_at) == KILLS
    assert mid_save_kills >= 1, "no kill landed while a checkpoint was being written"
    assert not any(output.glob(".checkpoint-*")), "the finished run left partial checkpoints behind"

    expected = load_file(root / "reference" / "pytorch_lora_weights.safetensors")
    actual = load_file(output / "pytorch_lora_weights.safetensors")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
