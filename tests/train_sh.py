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


def tiny_project(root: Path, model: Path, images: int = 8, **options: Any) -> Path:
    """A project folder as the wizard leaves it: config/config.json, multidatabackend.json, config.env."""
    from simpletuner.tools.demo_data import make_demo_dataset

    make_demo_dataset(root / "data", count=images, sizes=((64, 64),))
    write_json(root / "config" / "multidatabackend.json", [
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ])
    write_json(root / "config" / "config.json", {
        "model_family": "sdxl", "pretrained_model_name_or_path": str(model),
        "data_backend_config": "config/multidatabackend.json", "output_dir": "output",
        "lora_rank": 4, "learning_rate": 1e-3, "train_batch_size": 2, "seed": 7,
        "mixed_precision": "no", "report_to": "none", **options,
    })
    (root / "config" / "config.env").write_text(
        "TRAINING_NUM_PROCESSES=1\nTRAINING_DYNAMO_BACKEND=no\nSIMPLETUNER_LOG_LEVEL=INFO\n", encoding="utf-8"
    )
    return root


def user_env(**extra: str) -> dict[str, str]:
    """The test's environment without config-selecting variables, this checkout importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND", "SIMPLETUNER_PROGRESS")
           and not k.startswith(("TRAINING_", "SIMPLETUNER_LOG", "ACCELERATE_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def train_sh(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
             ) -> subprocess.CompletedProcess:
    """``bash train.sh ARGS`` in ``cwd``, whatever its exit code."""
    return subprocess.run(["bash", str(REPO / "train.sh"), *args], cwd=cwd, env=env or user_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_train_sh(cwd: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``bash train.sh ARGS`` in its own session (as a terminal's job), console to ``log``."""
    return subprocess.Popen(["bash", str(REPO / "train.sh"), *args], cwd=cwd, env=env or user_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and everything it started (torch's launcher puts each worker in its own session)."""
    import psutil

    try:
        tree = psutil.Process(process.pid)
        for child in tree.children(recursive=True):
            child.kill()
        tree.kill()
    except psutil.NoSuchProcess:
        pass
    process.wait()
