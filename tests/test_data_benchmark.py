"""The discovery benchmark script runs and ends with its figure (not a timing test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_discovery_benchmark_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "discovery.py"), "--images", "200", "--repeat", "1",
         "--folder", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"images_per_second: \d+", lines[-1]), lines[-1]
    assert int(lines[-1].split(": ")[1]) > 0
    assert any(line.startswith("cold:") for line in lines) and any(line.startswith("warm:") for line in lines)
