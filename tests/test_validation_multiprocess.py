"""Two CPU processes validate without deadlock: rank 0 draws while rank 1 waits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_sh import run_train_sh, tiny_project

pytestmark = pytest.mark.slow


def test_two_processes_validate_once_per_step(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = tiny_project(tmp_path, tiny_sdxl, images=4, max_train_steps=2, train_batch_size=1,
                        validation_prompt="a red square", validation_steps=1, validation_resolution="32",
                        validation_num_inference_steps=1, validation_disable_unconditional=True)
    (root / "config" / "config.env").write_text(
        "TRAINING_NUM_PROCESSES=2\nTRAINING_DYNAMO_BACKEND=no\nSIMPLETUNER_LOG_LEVEL=INFO\n", encoding="utf-8")
    result = run_train_sh(root)  # fails the test on a non-zero exit; its timeout catches a deadlock
    assert "x 2 process(es)" in result.stderr, result.stderr[-3000:]
    folders = sorted(p.name for p in (root / "output" / "validation_images").iterdir())
    assert folders == ["step_000000", "step_000001", "step_000002"]
    for step in (1, 2):
        manifest = json.loads((root / "output" / "validation_images" / f"step_{step:06d}" / "manifest.json").read_text())
        assert [e["file"] for e in manifest["images"]] == ["validation_32x32_seed7_0.png"]
    # Drawn once per step, by the main process only.
    assert result.stderr.count("validation at step 1:") == 1
    assert "failed" not in result.stderr
