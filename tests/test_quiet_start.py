"""Every entry point's console starts with our own lines, not library import chatter.

On a CPU machine, importing torchao and bitsandbytes (which diffusers and peft
pull in) logs missing-kernel warnings, and torch logs pytree deprecations.
They concern nobody running the trainer; warnings about the run itself must
still show.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What the libraries print at import on a CPU machine (seen with torchao 0.18,
# bitsandbytes 0.50, torch 2.13), and anything that looks like a stack dump.
LIBRARY_CHATTER = re.compile(
    r"Failed to load|_pytree|register_constant|kernels-community|Unable to import|Traceback"
)


def _run(args: list[str], cwd: Path, stdin: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SIMPLETUNER_LOG_LEVEL", None)
    # One stream, as a terminal shows it, so the order of lines is kept.
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, input=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )


def _console(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


def _assert_quiet(lines: list[str]) -> None:
    noisy = [line for line in lines if LIBRARY_CHATTER.search(line)]
    assert not noisy, "library chatter on the console:\n" + "\n".join(noisy)


def test_the_tiny_model_tool_prints_only_the_model_path(tmp_path: Path) -> None:
    result = _run(["-m", "simpletuner.tools.tiny_model", "--model_family", "sdxl",
                   "--output_dir", str(tmp_path / "model")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = _console(result)
    _assert_quiet(lines)
    assert lines == [str(tmp_path / "model")]


def test_the_wizard_starts_with_its_own_greeting(tmp_path: Path) -> None:
    result = _run([str(REPO / "configure.py"), "--config_dir", str(tmp_path / "config")], cwd=tmp_path, stdin="\n")
    lines = _console(result)
    _assert_quiet(lines)
    assert lines[0].startswith("This writes a training config"), lines[:3]


@pytest.mark.slow
def test_the_readme_demo_console_is_ours_from_first_to_last_line(tmp_path: Path) -> None:
    """The demo trains through train.sh and train.py, so it covers them too."""
    assert shutil.which("accelerate"), "train.sh needs accelerate on PATH"
    result = _run(["-m", "simpletuner.tools.demo", "--output_dir", str(tmp_path / "demo"),
                   "--max_train_steps", "2"], cwd=tmp_path)
    lines = _console(result)
    assert result.returncode == 0, result.stdout[-3000:]
    _assert_quiet(lines)
    assert lines[0].startswith("demo project written to"), lines[:3]
    assert lines[-1].startswith("mean change the LoRA makes"), lines[-3:]
    # train.py's own lines are still there: the run itself speaks.
    assert any(line.endswith("saved lora weights to output") for line in lines), lines
