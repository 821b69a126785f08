"""benchmarks/prefetch.py runs end to end and ends with its ratio line.

No timing is asserted (a shared test machine's timings say nothing about the
trainer); only that both runs were measured and the ratio is a number.
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


def test_benchmark_prints_the_prefetch_step_ratio_last(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "prefetch.py"), "--steps", "3", "--warmup", "1",
         "--rounds", "1", "--batch_size", "1", "--read_delay_ms", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "steps measured: 3 without, 3 with prefetch (qlen 10)" in lines
    match = re.fullmatch(r"prefetch_step_ratio: (\S+)", lines[-1])
    assert match, lines[-1]
    ratio = float(match.group(1))
    assert 0 < ratio < float("inf")
