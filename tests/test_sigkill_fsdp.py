"""SIGKILL of a two-process FSDP2 run never leaves an incomplete checkpoint as ``latest``.

The whole launch (accelerate and both ranks, as when a machine dies) is killed
twice: once while a sharded checkpoint is being written (its temporary folder
exists), once at a random moment after a checkpoint landed.  After each kill
every visible checkpoint holds both ranks' shards and the index; each attempt
resumes from the newest; the finished run's LoRA equals that of a run that was
never stopped.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.training.state_files import read_state
from train_sh import REPO, run_train_sh, tiny_project
from kill_helpers import newest_step as _newest_step, wait_until as _wait_until

pytestmark = pytest.mark.slow


def _start(root: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(["bash", str(REPO / "train.sh"), "--output_dir", "killed"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL train.sh, accelerate's launcher and both ranks at once, as when the machine dies.

    By process id, children first listed: torch's launcher starts the ranks in
    sessions of their own, so a process-group kill would miss them.
    """
    import psutil

    family = [psutil.Process(process.pid)]
    family += family[0].children(recursive=True)
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass






def _complete_checkpoints(output: Path) -> list[int]:
    steps = []
    for folder in sorted(output.glob("checkpoint-*")):
        state = json.loads((folder / "trainer_state.json").read_text())
        assert folder.name == f"checkpoint-{state['global_step']}"
        sharded = folder / "sharded"
        assert sorted(p.name for p in sharded.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        assert all((sharded / name).stat().st_size > 0 for name in ("__0_0.distcp", "__1_0.distcp"))
        for part in ("lr_scheduler", "rng_state"):
            read_state(folder / f"{part}.safetensors")
        steps.append(state["global_step"])
    return steps


def test_sigkilled_fsdp_run_resumes_to_the_same_weights(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = tiny_project(tmp_path, tiny_sdxl, fsdp_enable=True, max_train_steps=12, checkpointing_steps=2,
                        checkpoints_total_limit=2, resume_from_checkpoint="latest")
    env_file = root / "config" / "config.env"
    env_file.write_text(re.sub(r"TRAINING_NUM_PROCESSES=\d+", "TRAINING_NUM_PROCESSES=2", env_file.read_text()))
    run_train_sh(root, "--output_dir", "reference")

    output = root / "killed"
    rng = random.Random(7)
    resumed_at: list[int] = []
    caught_mid_save = False
    for attempt in range(3):
        newest = max(_complete_checkpoints(output), default=0)
        log = tmp_path / f"attempt{attempt}.log"
        process = _start(root, log)
        if attempt < 2:
            _wait_until(lambda: _newest_step(output) > newest, process, log)
            if attempt == 0:  # while the next checkpoint is being written
                _wait_until(lambda: any(output.glob(".checkpoint-*.partial")), process, log)
            else:
                time.sleep(rng.uniform(0.0, 1.0))  # within the next two steps; 6+ steps remain
            _kill_all(process)
        returncode = process.wait(timeout=300)
        caught_mid_save |= attempt < 2 and any(output.glob(".checkpoint-*.partial"))
        text = log.read_text(errors="replace")
        if attempt < 2:
            assert returncode == -signal.SIGKILL, text[-3000:]
            assert _complete_checkpoints(output), "a kill left no complete checkpoint"
        else:
            assert returncode == 0, text[-3000:]
        if attempt > 0:
            found = re.search(r"resumed from \S+checkpoint-(\d+) at step", text)
            assert found, text[-3000:]
            resumed_at.append(int(found.group(1)))
    assert caught_mid_save, "no kill landed while a checkpoint was being written"
    assert resumed_at == sorted(resumed_at) and resumed_at[0] >= 2

    expected = load_file(root / "reference" / "pytorch_lora_weights.safetensors")
    actual = load_file(output / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
