"""One run per output folder: a second run is refused naming the holder; a killed run's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simpletuner.errors import ConfigError
from simpletuner.tools.demo_data import make_demo_dataset
from simpletuner.training.run_lock import LOCK_FILE, output_folder_lock

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_a_second_holder_is_refused_naming_the_pid(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with output_folder_lock(output, env={}):
        record = json.loads((output / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=rf"--output_dir={output} is in use by another training run \(PID {os.getpid()},"):
            with output_folder_lock(output, env={}):
                pass
    assert not output.exists(), "a run that wrote nothing leaves no folder behind"
    with output_folder_lock(output, env={}):  # free again
        (output / "weights.safetensors").write_bytes(b"kept")
    assert not (output / LOCK_FILE).exists(), "a finished run leaves no lock behind"
    assert (output / "weights.safetensors").read_bytes() == b"kept"


def test_a_rejected_run_removes_every_folder_it_created(tmp_path: Path) -> None:
    """--output_dir=output/models in a fresh project creates output/ too; neither may stay behind."""
    output = tmp_path / "output" / "models"
    with pytest.raises(ConfigError):
        with output_folder_lock(output, env={}):
            raise ConfigError("a start-up check failed")
    assert not (tmp_path / "output").exists(), "the parent folder the lock created was left behind"
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "mine.txt").write_text("user's")
    with output_folder_lock(output, env={}):
        pass
    assert (tmp_path / "output" / "mine.txt").read_text() == "user's" and not output.exists()


def test_other_processes_of_the_same_run_are_not_refused(tmp_path: Path) -> None:
    with output_folder_lock(tmp_path, env={}):
        with output_folder_lock(tmp_path, env={"RANK": "1"}):
            pass
        assert (tmp_path / LOCK_FILE).exists(), "rank 1 must leave the main process's lock alone"


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_notice(tmp_path: Path, caplog) -> None:
    dead = _dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="simpletuner"):
        with output_folder_lock(tmp_path, env={}):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    notices = [r.getMessage() for r in caplog.records if "took over the lock" in r.getMessage()]
    assert len(notices) == 1 and f"PID {dead}" in notices[0] and "no longer running" in notices[0], notices


def _start(root: Path, model: Path, *flags: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(model), "--data_backend_config", "mdb.json", "--output_dir", "out", "--mixed_precision", "no",
         "--train_batch_size", "2", "--seed", "1", "--checkpointing_steps", "1000", *flags],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_a_second_run_on_a_busy_folder_stops_naming_the_first(tmp_path: Path, tiny_sdxl: Path) -> None:
    make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    (tmp_path / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    first = _start(tmp_path, tiny_sdxl, "--max_train_steps", "100000")
    lock = tmp_path / "out" / LOCK_FILE
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    try:
        second = _start(tmp_path, tiny_sdxl, "--max_train_steps", "1")
        _, stderr = second.communicate(timeout=120)
        assert first.poll() is None, "the first run must still hold the folder"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert second.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by another training run (PID {first.pid}," in errors[0], stderr[-3000:]
    # SIGKILL leaves the file naming the dead run; taking it over is shown above and in test_sigkill.py.
    assert json.loads(lock.read_text())["pid"] == first.pid
