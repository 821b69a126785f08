"""benchmarks/distributed.py runs end to end and ends with its FSDP2/DDP memory ratio.

No timing is asserted; the ratio is bytes held per process, which FSDP2's
sharding halves at two processes whatever the machine's load.  A tiny run:
one layer of width 128, one measured step, two processes only.
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


def test_benchmark_prints_the_fsdp_memory_ratio_last(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "distributed.py"), "--steps", "1",
                             "--width", "128", "--layers", "1", "--processes", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["2 process(es) ddp ", "2 process(es) fsdp"]
    match = re.fullmatch(r"fsdp_memory_ratio: (\S+)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) <= 0.55
