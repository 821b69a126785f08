"""A stop keeps the work, and progress shows without a terminal.

SIGINT (Ctrl-C) or SIGTERM (a preemptible machine) mid-training: the step in
hand finishes, a checkpoint is written, one line says where the run resumes,
and the exit code is 130/143.  Resuming from that checkpoint ends bitwise
equal to a run that was never stopped.  Each signal is sent only after the
console (or debug.log) shows training progress, and the tests check that the
stop landed between the first and the last step.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import torch
from safetensors.torch import load_file

from simpletuner.training.state_files import read_state
from simpletuner.training.stop import DUPLICATE_WINDOW_S, StopSignals, StoppedAtOnce
from train_sh import kill_tree, start_train_sh, tiny_project, train_sh, user_env

STEPS = 12
PROGRESS_LINE = re.compile(
    r"INFO step (\d+)/12 \(\d+%\)  loss \d+\.\d{4}  lr 1\.00e-03  \d+\.\d\d s/step  \d+\.\d\d samples/s  ETA \S+"
)
STOPPED = re.compile(r"stopped after step (\d+), saved as checkpoint-\1; run again with "
                     r"--resume_from_checkpoint latest to continue from step \1")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still running when it ends (a failed test) are killed."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            kill_tree(process)


def _wait_for(path: Path, pattern: re.Pattern, process: subprocess.Popen, timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(path.read_text(errors="replace")) if path.exists() else None
        if found:
            return found
        assert process.poll() is None, f"exited {process.returncode} first:\n{path.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} not seen in {timeout}s")


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path) -> Path:
    """An uninterrupted run, console redirected to a file: no terminal, so progress comes as lines."""
    root = tiny_project(tmp_path_factory.mktemp("stop"), tiny_sdxl, max_train_steps=STEPS, checkpointing_steps=100,
                        train_batch_size=1)
    result = train_sh(root, "--output_dir", "reference")
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "reference.console").write_text(result.stderr)
    return root


@pytest.mark.slow
def test_without_a_terminal_progress_lines_reach_the_console_and_debug_log(reference: Path) -> None:
    console = (reference / "reference.console").read_text()
    # The first step (the loop has started), every 10th, and the last.
    assert [int(step) for step in PROGRESS_LINE.findall(console)] == [1, 10, 12], console[-3000:]
    debug_log = (reference / "reference" / "debug.log").read_text()
    assert [int(step) for step in re.findall(r"progress INFO step (\d+)/12 ", debug_log)] == [1, 10, 12]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_training_checkpoints_and_the_resumed_run_is_bitwise(
    reference: Path, signum: signal.Signals, started: list
) -> None:
    name = signum.name.lower()
    log = reference / f"{name}.console"
    if signum == signal.SIGINT:
        # Ctrl-C at a terminal: the whole job gets SIGINT.  With the bar drawn,
        # the progress lines go to debug.log only, so watch that.
        env = user_env(SIMPLETUNER_PROGRESS="bar")
        process = start_train_sh(reference, log, "--output_dir", name, env=env)
        started.append(process)
        seen = _wait_for(reference / name / "debug.log", re.compile(r"progress DEBUG step (\d+)/12 "), process)
        os.killpg(process.pid, signum)
    else:
        process = start_train_sh(reference, log, "--output_dir", name)
        started.append(process)
        seen = _wait_for(log, PROGRESS_LINE, process)
        process.send_signal(signum)
    assert process.wait(timeout=300) == 128 + signum
    console = log.read_text()
    assert "Traceback" not in console
    assert f"{signum.name} received: finishing this step, then saving a checkpoint" in console
    stopped = [int(step) for step in STOPPED.findall(console)]
    assert len(stopped) == 1, console[-3000:]
    step = stopped[0]
    assert int(seen.group(1)) <= step < STEPS, "the signal did not land mid-training"
    assert sorted(p.name for p in (reference / name).glob("checkpoint-*")) == [f"checkpoint-{step}"]
    assert not (reference / name / "pytorch_lora_weights.safetensors").exists()
    if signum == signal.SIGINT:
        assert "Training:" in console and "step 1/12" not in console  # the bar, not the lines

    resumed = train_sh(reference, "--output_dir", name, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {name}/checkpoint-{step} at step {step}" in resumed.stderr
    expected, actual = _weights(reference / "reference"), _weights(reference / name)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
def test_two_processes_stop_after_the_same_step(reference: Path, started: list) -> None:
    # Only rank 1 is signalled: rank 0 learns of it through the per-step agreement.
    log = reference / "two.console"
    env = user_env(TRAINING_NUM_PROCESSES="2", OMP_NUM_THREADS="1")
    process = start_train_sh(reference, log, "--output_dir", "two", env=env)
    started.append(process)
    seen = _wait_for(log, PROGRESS_LINE, process)
    workers = [child for child in psutil.Process(process.pid).children(recursive=True)
               if child.environ().get("LOCAL_RANK") == "1"]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143, log.read_text()[-3000:]
    console = log.read_text()
    assert "Traceback" not in console
    [step] = [int(s) for s in STOPPED.findall(console)]
    assert int(seen.group(1)) <= step < STEPS
    checkpoint = reference / "two" / f"checkpoint-{step}"
    rng = read_state(checkpoint / "rng_state.safetensors")["per_rank"]
    assert len(rng) == 2  # both ranks took part in the same save


@pytest.mark.slow
def test_a_signal_while_caching_keeps_the_caches(tmp_path: Path, tiny_sdxl: Path, started: list) -> None:
    root = tiny_project(tmp_path, tiny_sdxl, images=24, max_train_steps=STEPS)
    log = tmp_path / "caching.console"
    process = start_train_sh(root, log)
    started.append(process)
    # The start-up summary ends with the memory estimate, just before caching starts.
    _wait_for(log, re.compile(r"peak: .* on the training device"), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143
    console = log.read_text()
    assert "Traceback" not in console
    assert console.rstrip().endswith(
        "stopped by SIGTERM while caching; the cache entries written so far are kept and the next run reuses them"
    ), console[-2000:]
    assert not list((root / "output").glob("checkpoint-*"))


def test_a_second_signal_stops_at_once_but_a_duplicate_copy_does_not() -> None:
    now = [100.0]
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(clock=lambda: now[0]) as stop:
        stop.enter("training", deferring=True)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # noted, not raised: the step finishes
        now[0] += DUPLICATE_WINDOW_S / 2
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's forwarded copy of the same signal
        now[0] += DUPLICATE_WINDOW_S
        with pytest.raises(StoppedAtOnce) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; it must not get this far
        assert (stopped.value.signum, stopped.value.phase) == (signal.SIGTERM, "training")
    assert signal.getsignal(signal.SIGTERM) == before


def test_before_the_loop_the_first_signal_stops_at_once() -> None:
    with StopSignals() as stop:
        stop.enter("caching")
        with pytest.raises(StoppedAtOnce) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert stopped.value.phase == "caching"
