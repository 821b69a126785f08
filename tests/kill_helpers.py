"""Polling a run that a test is about to kill: wait for a moment, read the newest checkpoint."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll ``condition`` tightly; fail if the run ends first or the moment never comes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not reached within {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.002)


def newest_step(output: Path) -> int:
    """Cheap enough to poll: complete checkpoints are the only folders named checkpoint-N."""
    names = [p.name for p in output.glob("checkpoint-*")] if output.is_dir() else []
    return max((int(name.split("-")[1]) for name in names), default=0)
