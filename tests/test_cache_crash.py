"""A run killed (SIGKILL) while caching leaves only whole entries, and the next run reuses them.

Entries are written to a temporary file and renamed into place, so whatever
moment the kill lands at, every file under an entry's name is complete.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simpletuner.caching.store import TensorStore
from simpletuner.tools.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
IMAGES = 240


def _project(root: Path, model: Path) -> Path:
    make_demo_dataset(root / "data", count=IMAGES, sizes=((64, 64),))
    (root / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    return root


def _start(root: Path, model: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(model), "--data_backend_config", "mdb.json", "--output_dir", "out", "--cache_only",
         "--vae_batch_size", "1", "--mixed_precision", "no", "--seed", "0"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )


def _entries(store_root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in store_root.rglob("*.safetensors")}


def test_a_kill_while_caching_leaves_whole_entries_that_the_next_run_reuses(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, tiny_sdxl)
    latents = root / "cache" / "vae" / "latents"
    store = TensorStore(latents)
    process = _start(root, tiny_sdxl, tmp_path / "killed.log")
    deadline = time.monotonic() + 180
    while len(_entries(latents)) < 30:
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "caching never started"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    survivors = _entries(latents)
    assert 30 <= len(survivors) < IMAGES, "the kill landed after caching had finished; use more images"
    for path in survivors:  # whole, not merely present: a rename only ever publishes a complete file
        assert store.load(path.name.split(".")[0]) is not None, path

    rerun = _start(root, tiny_sdxl, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    log = (tmp_path / "rerun.log").read_text()
    counts = re.search(r"'pics' latent cache: (\d+) reused, (\d+) encoded", log)
    assert counts, log[-3000:]
    assert int(counts.group(1)) == len(survivors) and int(counts.group(2)) == IMAGES - len(survivors)
    after = _entries(latents)
    assert len(after) == IMAGES
    assert {p: after[p] for p in survivors} == survivors, "an entry written before the kill was encoded again"
    for path in after:
        entry = store.load(path.name.split(".")[0])
        assert entry is not None and entry["latent"].shape[-2:] == (8, 8) and torch.isfinite(entry["latent"]).all()
