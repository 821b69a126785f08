"""benchmarks/caching.py runs end to end and ends with its ratio line (not a timing test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_caching_benchmark_prints_throughputs_and_the_overhead_ratio_last(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "caching.py"), "--images", "8", "--repeat", "1", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"overhead_ratio: (\d+\.\d{4})", lines[-1])
    assert match, lines[-1]
    assert 0 < float(match.group(1)) < float("inf")
    for name in ("cache", "bare loop"):
        assert any(re.match(rf"{name}: +latents [0-9.]+ s \([0-9.]+ images/s\), text embeds [0-9.]+ s "
                            rf"\([0-9.]+ prompts/s\)", line) for line in lines), lines
