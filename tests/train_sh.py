"""Running ``train.sh`` on a project folder, as a user would, for the multi-process tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def run_train_sh(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``train.sh ARGS`` in ``root`` with this checkout importable; fails the test unless it exits 0.

    One thread per process: the two processes share the machine's cores.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(["bash", str(REPO / "train.sh"), *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
