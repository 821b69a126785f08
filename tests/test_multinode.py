"""Two "nodes" on loopback: two train.sh launches, machine ranks 0 and 1, one process each.

They train the same LoRA as two processes on one machine, bit for bit; only
global rank 0 writes the final weights and the model card into the shared
output folder; both resume from its checkpoints.  When one node's process is
killed, both nodes stop within the timeout, each with one line, and resuming
completes the run.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from train_sh import kill_tree, start_train_sh, tiny_project, train_sh, user_env

pytestmark = pytest.mark.slow
WEIGHTS = "pytorch_lora_weights.safetensors"
TIMEOUT_S = 30

# Every training process notes the timeout its process group was given, and the
# final weights and model card it moves into place (both are published by rename).
_RECORD = """
import os, sys
if "LOCAL_RANK" in os.environ:
    record = os.path.join(os.environ["MARKERS"], "rank" + os.environ["RANK"])
    def _note(line):
        with open(record, "a") as f:
            f.write(line + "\\n")
    def _audit(event, args):
        if event == "os.rename" and os.path.basename(str(args[1])) in ("pytorch_lora_weights.safetensors", "README.md"):
            _note("wrote " + os.path.basename(str(args[1])))
    sys.addaudithook(_audit)
    import torch.distributed as dist
    _init = dist.init_process_group
    def _recording_init(*args, **kwargs):
        _note("timeout " + str(int(kwargs["timeout"].total_seconds())))
        return _init(*args, **kwargs)
    dist.init_process_group = _recording_init
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def project(tmp_path: Path, tiny_sdxl: Path) -> Path:
    root = tiny_project(tmp_path / "project", tiny_sdxl, max_train_steps=4, checkpointing_steps=2)
    (root / "markers").mkdir()
    (root / "hook").mkdir()
    (root / "hook" / "sitecustomize.py").write_text(_RECORD)
    return root


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = user_env(OMP_NUM_THREADS="1", MARKERS=str(project / "markers"), **extra)
    env["PYTHONPATH"] = f"{project / 'hook'}:{env['PYTHONPATH']}"
    return env


def _start_nodes(project: Path, name: str, *args: str, second: Path | None = None) -> list[subprocess.Popen]:
    """Machine 0 in ``project``, machine 1 there too or in its own copy ``second``."""
    port = str(_free_port())
    return [
        start_train_sh(second if rank and second else project, project / f"{name}-node{rank}.log", *args, env=_env(
            project, TRAINING_NUM_PROCESSES="2", TRAINING_NUM_MACHINES="2", TRAINING_MACHINE_RANK=str(rank),
            TRAINING_MAIN_PROCESS_IP="127.0.0.1", TRAINING_MAIN_PROCESS_PORT=port))
        for rank in (0, 1)
    ]


def _finish(project: Path, name: str, nodes: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    logs = []
    try:
        for rank, node in enumerate(nodes):
            node.wait(timeout=timeout)
            logs.append((project / f"{name}-node{rank}.log").read_text(errors="replace"))
    finally:
        for node in nodes:
            kill_tree(node)
    return logs


def _assert_same_weights(expected: Path, actual: Path) -> None:
    want, got = load_file(expected), load_file(actual)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def _records(project: Path) -> dict[str, list[str]]:
    return {path.name: path.read_text().splitlines() for path in sorted((project / "markers").iterdir())}


def test_two_nodes_train_as_two_processes_on_one_machine(project: Path) -> None:
    single = train_sh(project, "--output_dir", "single", env=_env(project, TRAINING_NUM_PROCESSES="2"))
    assert single.returncode == 0, single.stderr[-3000:]
    # --distributed_timeout's default reaches the process group too (accelerate drops a value equal to its own).
    assert [lines[0] for lines in _records(project).values()] == ["timeout 600", "timeout 600"]
    for marker in (project / "markers").iterdir():
        marker.unlink()

    nodes = _start_nodes(project, "multi", "--output_dir", "multi", "--distributed_timeout", str(TIMEOUT_S))
    logs = _finish(project, "multi", nodes)
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "x 2 process(es)" in logs[0]
    _assert_same_weights(project / "single" / WEIGHTS, project / "multi" / WEIGHTS)
    assert (project / "multi" / "README.md").is_file()
    # Only global rank 0 published the weights and the card; both groups got --distributed_timeout.
    records = _records(project)
    assert sorted(records) == ["rank0", "rank1"]
    assert f"timeout {TIMEOUT_S}" in records["rank0"] and f"timeout {TIMEOUT_S}" in records["rank1"]
    assert {"wrote pytorch_lora_weights.safetensors", "wrote README.md"} <= set(records["rank0"])
    assert not [line for line in records["rank1"] if line.startswith("wrote")], records["rank1"]

    # Both nodes resume from the shared folder's checkpoint and finish as the uninterrupted run did.
    shutil.copytree(project / "multi" / "checkpoint-2", project / "resumed" / "checkpoint-2")
    nodes = _start_nodes(project, "resumed", "--output_dir", "resumed", "--resume_from_checkpoint", "latest")
    logs = _finish(project, "resumed", nodes)
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "at step 2" in logs[0]
    _assert_same_weights(project / "single" / WEIGHTS, project / "resumed" / WEIGHTS)


def test_a_machine_that_sees_other_data_stops_both_before_training(project: Path, tmp_path: Path) -> None:
    from simpletuner.tools.demo_data import make_demo_dataset

    # Machine 1 has its own copy of the project, whose data folder holds two more images.
    second = tmp_path / "second"
    shutil.copytree(project / "config", second / "config")
    make_demo_dataset(second / "data", count=10, sizes=((64, 64),))
    shared = project / "shared-output"
    nodes = _start_nodes(project, "plan", "--output_dir", str(shared), second=second)
    logs = _finish(project, "plan", nodes)
    assert [node.returncode for node in nodes] == [2, 2], logs[0][-2000:] + logs[1][-2000:]
    for log in logs:
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        expected = "error: the training processes do not agree on the data plan: rank(s) 1 differ from rank 0 in "
        assert errors and errors[0].startswith(expected), log[-2000:]
        assert "images per bucket" in errors[0] and "files" in errors[0]
    # stopped before step 0, before any latent was encoded
    assert not list(shared.glob("checkpoint-*")) and not list((project / "cache").rglob("*.safetensors*"))


def _training_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "simpletuner.cli.train" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no training process of rank {rank}")


def _newest_step(output: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in output.glob("checkpoint-*")), default=0)


def test_a_killed_rank_ends_both_nodes_within_the_timeout_and_resume_completes(project: Path) -> None:
    # The kill comes within a poll (20 ms) of checkpoint-4, so 16 steps left are plenty to land mid-run;
    # the resume trains them all, two nodes over gloo, so no more than that.
    steps = 20
    args = ("--output_dir", "out", "--max_train_steps", str(steps), "--distributed_timeout", str(TIMEOUT_S))
    nodes = _start_nodes(project, "killed", *args)
    try:
        deadline = time.monotonic() + 300
        while _newest_step(project / "out") < 4:  # mid-run: two checkpoints written
            assert all(node.poll() is None for node in nodes), "a node ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint-4 within 300s"
            time.sleep(0.02)
        victim = _training_process(nodes[1], rank=1)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        killed_step = _newest_step(project / "out")
        for node in nodes:
            node.wait(timeout=TIMEOUT_S + 30)
        took = time.monotonic() - killed_at
    finally:
        for node in nodes:
            kill_tree(node)
    assert took < TIMEOUT_S + 30
    assert 4 <= killed_step < steps and not (project / "out" / WEIGHTS).exists(), "the kill did not land mid-run"
    node0, node1 = ((project / f"killed-node{rank}.log").read_text(errors="replace") for rank in (0, 1))
    assert "Traceback" not in node0 + node1
    # The killed process's machine names it; the other machine's process says it lost contact.
    assert nodes[1].returncode == 128 + signal.SIGKILL, node1[-3000:]
    assert [line for line in node1.splitlines() if line.startswith("error:")] == [
        "error: training process 1 was killed by SIGKILL (often the system running out of memory); the other "
        "processes were stopped; run again with --resume_from_checkpoint latest to continue from the last checkpoint"
    ]
    assert nodes[0].returncode == 5, node0[-3000:]
    [lost] = [line for line in node0.splitlines() if line.startswith("error:")]
    assert lost.startswith("error: training process 0 of 2 lost contact with the others (")
    assert lost.endswith("run again with --resume_from_checkpoint latest to continue from the last checkpoint")

    resumed_from = _newest_step(project / "out")
    nodes = _start_nodes(project, "resume", *args, "--resume_from_checkpoint", "latest")
    logs = _finish(project, "resume", nodes)
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert f"at step {resumed_from}" in logs[0]
    assert (project / "out" / WEIGHTS).is_file()


def test_on_one_machine_the_launcher_stops_the_sibling_of_a_killed_process(project: Path) -> None:
    log = project / "one-machine.log"
    launcher = start_train_sh(project, log, "--output_dir", "out", "--max_train_steps", "60",
                              "--distributed_timeout", str(TIMEOUT_S), env=_env(project, TRAINING_NUM_PROCESSES="2"))
    try:
        deadline = time.monotonic() + 300
        while _newest_step(project / "out") < 4:
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        sibling = _training_process(launcher, rank=0)
        _training_process(launcher, rank=1).send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.wait(timeout=TIMEOUT_S + 30)
        took = time.monotonic() - killed_at
    finally:
        kill_tree(launcher)
    text = log.read_text(errors="replace")
    assert took < TIMEOUT_S + 30 and not sibling.is_running()
    assert not (project / "out" / WEIGHTS).exists(), "the kill did not land mid-run"
    assert launcher.returncode == 128 + signal.SIGKILL, text[-3000:]
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    # The sibling may say it lost contact before the launcher stops it; the last line names the killed process.
    assert all(line.startswith("error: training process 0 of 2 lost contact") for line in errors[:-1]), errors
    assert errors[-1].startswith("error: training process 1 was killed by SIGKILL"), errors
