"""A full disk: a warning before training, then one line and exit code 3 when a save fails.

The real cases run train.py with its output folder on a tiny tmpfs (mounting
needs root on Linux; elsewhere those tests skip and say why).  The last good
checkpoint must stay intact and loadable, and no partial folder may be left.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file

from simpletuner.errors import OUTPUT_WRITE_EXIT_CODE, OutputWriteError
from simpletuner.tools.demo_data import make_demo_dataset
from simpletuner.training.disk_space import SpaceNeeded, checkpoints_at_once, format_bytes, space_warning, writing
from simpletuner.training.state_files import read_state

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path: Path):
    """``small_disk("1500k")`` mounts a tmpfs of that size and returns it; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here (needs root on Linux): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project for both runs, so the second reuses the first one's caches."""
    root = tmp_path_factory.mktemp("disk_full")
    make_demo_dataset(root / "data", count=8, sizes=((64, 64),))
    (root / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    return root


def _train(root: Path, model: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(model), "--data_backend_config", "mdb.json", "--output_dir", str(output), "--train_batch_size", "2",
         "--seed", "3", "--mixed_precision", "no", *flags],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def _the_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == OUTPUT_WRITE_EXIT_CODE == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_stops_with_one_line(project: Path, tiny_sdxl: Path, small_disk) -> None:
    # A checkpoint of this run is about 1.1 MB: the first fits in 1.5 MB, the second does not.
    output = small_disk("1500k") / "out"
    result = _train(project, tiny_sdxl, output, "--max_train_steps", "6", "--checkpointing_steps", "2")
    line = _the_error_line(result)
    for fragment in ("could not write checkpoint-4", "No space left on device", "free there",
                     "checkpoint-2, the last complete checkpoint, is intact", "--resume_from_checkpoint latest"):
        assert fragment in line, line
    warnings = [row for row in result.stderr.splitlines() if "but this run will write about" in row]
    assert len(warnings) == 1 and f"--output_dir={output} has" in warnings[0], result.stderr[-3000:]

    assert sorted(p.name for p in output.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    kept = output / "checkpoint-2"
    assert json.loads((kept / "trainer_state.json").read_text())["global_step"] == 2
    load_file(kept / "trainable.safetensors")
    load_file(kept / "pytorch_lora_weights.safetensors")
    assert read_state(kept / "optimizer.safetensors")["state"]
    assert read_state(kept / "lr_scheduler.safetensors")["last_epoch"] == 2
    assert len(read_state(kept / "rng_state.safetensors")["per_rank"]) == 1
    assert not (output / ".simpletuner.lock").exists()


@pytest.mark.slow
def test_final_weights_that_do_not_fit_stop_with_one_line(project: Path, tiny_sdxl: Path, small_disk) -> None:
    # The final LoRA is about 270 KB; no checkpoint is written before it.
    output = small_disk("200k") / "out"
    result = _train(project, tiny_sdxl, output, "--max_train_steps", "1", "--checkpointing_steps", "100")
    line = _the_error_line(result)
    assert "could not write the final weights" in line and "no checkpoint had been saved yet" in line, line
    assert not (output / ".final.partial").exists()
    assert not (output / "pytorch_lora_weights.safetensors").exists()


def test_the_warning_compares_free_space_with_the_estimate(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert space_warning(tmp_path, SpaceNeeded(1024, 3, 1024)) is None
    line = space_warning(tmp_path, SpaceNeeded(free, 2, 5 * 1024**2))
    assert line is not None and f"--output_dir={tmp_path}" in line
    assert "2 checkpoint(s)" in line and "5.0 MB of final weights" in line and "--checkpoints_total_limit" in line
    assert format_bytes(1536) == "1.5 KB"


def test_checkpoints_on_disk_at_once() -> None:
    def config(limit):
        return SimpleNamespace(checkpointing_steps=10, checkpoints_total_limit=limit)

    assert checkpoints_at_once(config(2), total_steps=100, start_step=0) == 3  # two kept plus the one being written
    assert checkpoints_at_once(config(None), total_steps=100, start_step=0) == 10
    assert checkpoints_at_once(config(None), total_steps=100, start_step=70) == 3
    assert checkpoints_at_once(config(5), total_steps=15, start_step=0) == 1
    assert checkpoints_at_once(config(5), total_steps=9, start_step=0) == 0


def test_a_failed_write_removes_the_partial_folder(tmp_path: Path) -> None:
    partial = tmp_path / ".checkpoint-4.partial"
    partial.mkdir()
    (partial / "half.safetensors").write_bytes(b"x")
    with pytest.raises(OutputWriteError, match="could not write checkpoint-4 in .*: No space left on device"):
        with writing("checkpoint-4", tmp_path, partial=partial):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not partial.exists()
    # safetensors' own wording of the same failure
    with pytest.raises(OutputWriteError, match="No space left on device"):
        with writing("checkpoint-4", tmp_path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    # anything that is not an I/O failure is a bug and keeps its type
    with pytest.raises(SafetensorError, match="share memory"):
        with writing("checkpoint-4", tmp_path):
            raise SafetensorError("tensors share memory")
