"""benchmarks/validation.py runs end to end and ends with its ratio line.

No timing is asserted (a test machine's timings say nothing about validation):
one round, one denoising step, one 32 px size, one torch thread.
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


def test_benchmark_prints_the_validation_overhead_ratio_last(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "validation.py"), "--rounds", "1", "--steps", "1",
         "--resolutions", "32", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "images per validation: 2 (2 prompts x 1 sizes, 1 steps)" in lines
    match = re.fullmatch(r"validation_overhead_ratio: (\S+)", lines[-1])
    assert match and float(match.group(1)) > 0, lines[-1]
