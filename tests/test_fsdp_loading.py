"""--fsdp_cpu_ram_efficient_loading: only the main process reads the base weights.

Two processes under torchrun (tests/fsdp_loading_worker.py).  The non-main
process is pointed at a copy of the model folder that has every config but no
weight file: it can only succeed by never reading one.  What it ends up
holding (each parameter's shard, each buffer, persistent or not) must equal,
bit for bit, what the ordinary loading gives, on PixArt Sigma with a LoRA
(its positional-embedding table is a non-persistent buffer, never sent) and
on SD3 fully trained (its positional embedding is a persistent buffer, sent).
Training with the option is checked against training without it in
tests/test_fsdp_training.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "fsdp_loading_worker.py"


def _without_weights(model: Path, folder: Path) -> Path:
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.pt", "*.pth"))
    assert not [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")]
    return folder


@pytest.mark.slow
def test_only_the_main_process_reads_weights_and_every_shard_comes_out_the_same(
        tmp_path: Path, tiny_pixart_sigma: Path, tiny_sd3: Path) -> None:
    specs = [f"pixart_sigma:lora:{tiny_pixart_sigma}:{_without_weights(tiny_pixart_sigma, tmp_path / 'pixart')}",
             f"sd3:full:{tiny_sd3}:{_without_weights(tiny_sd3, tmp_path / 'sd3')}"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(WORKER), str(tmp_path), *specs], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        for family, seen in report.items():
            assert seen["differ"] == [], (rank, family, seen["differ"][:5])
            assert seen["meta"] == [], (rank, family)  # everything was given memory
        pixart, sd3 = report["pixart_sigma"], report["sd3"]
        # The adapter, created on the empty base, holds the main process's initial values.
        assert pixart["trained"] and all(".lora_" in name for name in pixart["trained"])
        assert any(".lora_" in name for name in pixart["parameters"])
        assert pixart["buffers"] == {"pos_embed.pos_embed": False}  # non-persistent: never sent
        assert sd3["buffers"] == {"pos_embed.pos_embed": True}  # persistent: sent
        assert sd3["trained"] == sd3["parameters"]
