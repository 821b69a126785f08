"""benchmarks/train_step.py runs end to end and ends with its ratio line.

Only that the script works is checked here: no timing is asserted (a test
machine's timings say nothing about the trainer).  A tiny run: 3 measured
steps per loop, batch 1, 8x8 latents, one torch thread so a busy machine
cannot stretch it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_step.py"


def test_benchmark_prints_a_positive_step_time_ratio_last(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--steps", "3", "--warmup", "1", "--batch_size", "1", "--resolution", "64", "--threads", "1",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-2000:]
    match = re.fullmatch(r"step_time_ratio: (\S+)", lines[-1])
    assert match, lines[-1]
    ratio = float(match.group(1))
    assert ratio > 0 and ratio == ratio and ratio != float("inf")
    assert any(re.match(r"trainer step: +median [0-9.]+ ms", line) for line in lines)
    assert any(re.match(r"bare step: +median [0-9.]+ ms", line) for line in lines)
