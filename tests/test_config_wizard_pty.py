"""configure.py in a pseudo-terminal, typed the way a person does: arrow keys, Enter, Ctrl-U, Ctrl-C.

The arrow-key menus only appear when stdin and stdout are a terminal, so
these tests are the ones that see what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simpletuner.tools.demo_data import make_demo_dataset

pexpect = pytest.importorskip("pexpect", reason="pexpect is a test dependency (pyproject); install it to drive a pty")

REPO = Path(__file__).resolve().parents[1]
UP, DOWN, ENTER, CLEAR = "\x1b[A", "\x1b[B", "\r", "\x15"  # Ctrl-U empties a filled-in answer


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    # No cursor-position queries: a pty driven by pexpect does not answer them.
    env.update(PYTHONPATH=str(REPO), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    return env


def _spawn(cwd: Path):
    child = pexpect.spawn(sys.executable, [str(REPO / "configure.py")], cwd=str(cwd), env=_env(),
                          encoding="utf-8", timeout=120, dimensions=(50, 250))
    return child


def _type(child, text: str) -> None:
    child.send(CLEAR)
    child.send(text + ENTER)


def test_a_wrong_answer_is_corrected_then_ctrl_c_writes_nothing(tmp_path: Path):
    child = _spawn(tmp_path)
    child.expect("Model family")
    child.send(DOWN + DOWN + DOWN + ENTER)  # sdxl, legacy, sd3, flux
    child.expect("Flavour")
    child.send(ENTER)
    child.expect("Base model")
    _type(child, "./no/such/model")
    child.expect("no such folder")
    child.expect("Base model")
    _type(child, "black-forest-labs/FLUX.1-dev")
    child.expect("Train a LoRA or the full model")
    child.sendcontrol("c")
    child.expect("cancelled; nothing was written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_full_run_writes_a_config_that_trains(tmp_path: Path, tiny_sdxl: Path):
    make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    child = _spawn(tmp_path)
    child.expect("Model family")
    child.send(ENTER)  # sdxl, the first
    child.expect("Flavour")
    child.send(ENTER)
    child.expect("Base model")
    _type(child, str(tiny_sdxl))
    child.expect("Train a LoRA or the full model")
    child.send(ENTER)
    child.expect("LoRA library")
    child.send(ENTER)
    child.expect("LoRA rank")
    _type(child, "-3")
    child.expect("must be at least 1")
    child.expect("LoRA rank")
    _type(child, "4")
    child.expect("Output folder")
    child.send(ENTER)
    child.expect(["Memory training may use", "GPU memory to plan for"])
    child.send(ENTER)
    child.expect("proposed: needs about")
    child.expect("Mixed precision")
    child.send(UP + ENTER)  # from the proposed bf16 up to no
    child.expect("Quantise the base model")
    child.send(ENTER)
    child.expect("Gradient checkpointing")
    child.send(ENTER)
    child.expect("Batch size")
    _type(child, "2")
    child.expect("Resolution")
    _type(child, "64")
    child.expect("Optimizer")
    child.send(ENTER)
    child.expect("Keep an EMA")
    child.send(ENTER)
    child.expect("Dataset folder")
    _type(child, "data")
    child.expect("4 image files found, 4 usable, 0 skipped")
    child.expect("2 steps per epoch at this batch size")
    child.expect("Another dataset folder")
    child.send(ENTER)
    child.expect("Caption strategy")
    child.send(ENTER)  # textfile, proposed: every image has its .txt
    child.expect("Learning rate")
    _type(child, "1e-3")
    child.expect("Training length")
    _type(child, "2")
    for label in ("Save a checkpoint every", "Checkpoints to keep", "Seed", "Validation prompt", "Report to",
                  "Upload the result", "Number of GPUs", "Number of machines"):
        child.expect(label)
        child.send(ENTER)
    child.expect("then train:")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before

    written = (tmp_path / "config" / "config.json").read_text()
    assert '"--lora_rank": 4' in written and '"--mixed_precision": "no"' in written
    checked = subprocess.run([sys.executable, str(REPO / "train.py"), "--dry_run"], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "dry run: the run would start" in checked.stdout
    result = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = list((tmp_path / "output" / "models").glob("*.safetensors"))
    assert weights, sorted(p.name for p in (tmp_path / "output" / "models").iterdir())
