"""The whole SDXL LoRA path, through train.sh and accelerate, on a tiny model.

The tests in this module share one project folder and run in order: the
first trains through ``train.sh``; the later ones reuse its caches and its
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.tools.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Two datasets over the same 24 images: aspect buckets without cropping (3
# buckets of 8) and centre-cropped squares (1 bucket of 24).  At batch 2 that
# is 12 + 12 = 24 steps per epoch: the run crosses an epoch boundary, and the
# resumed half starts mid-epoch.
STEPS = 30
CHECKPOINT_EVERY = 15


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path) -> Path:
    root = tmp_path_factory.mktemp("sdxl_project")
    make_demo_dataset(root / "data", count=24)
    _write_json(
        root / "config" / "multidatabackend.json",
        [
            {
                "id": "shapes",
                "type": "local",
                "instance_data_dir": "data",
                "cache_dir_vae": "cache/vae/shapes",
                "caption_strategy": "textfile",
                "resolution": 64,
                "resolution_type": "pixel_area",
                "aspect_bucket_alignment": 16,
                "crop": False,
            },
            {
                "id": "shapes-cropped",
                "type": "local",
                "instance_data_dir": "data",
                "cache_dir_vae": "cache/vae/shapes-cropped",
                "caption_strategy": "textfile",
                "resolution": 64,
                "resolution_type": "pixel_area",
                "aspect_bucket_alignment": 16,
                "crop": True,
                "crop_style": "center",
                "crop_aspect": "square",
            },
            {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
        ],
    )
    # SimpleTuner-style string values, as users' config files have them.
    _write_json(
        root / "config" / "config.json",
        {
            "--model_family": "sdxl",
            "--pretrained_model_name_or_path": str(tiny_sdxl),
            "--data_backend_config": "config/multidatabackend.json",
            "--output_dir": "output",
            "--model_type": "lora",
            "--lora_rank": "8",
            "--lora_alpha": "8",
            "--learning_rate": "1e-3",
            "--lr_scheduler": "constant_with_warmup",
            "--lr_warmup_steps": "2",
            "--train_batch_size": "2",
            "--gradient_accumulation_steps": "1",
            "--max_train_steps": str(STEPS),
            "--checkpointing_steps": str(CHECKPOINT_EVERY),
            "--checkpoints_total_limit": "2",
            "--seed": "7",
            "--mixed_precision": "bf16",
            "--report_to": "tensorboard",
        },
    )
    return root


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(project: Path, command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=project, env=_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _latent(pipeline, prompt: str) -> torch.Tensor:
    return pipeline(
        prompt, num_inference_steps=2, height=64, width=64, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images


def test_train_sh_trains_a_lora_that_diffusers_loads(project: Path, tiny_sdxl: Path) -> None:
    result = _run(project, ["bash", str(REPO / "train.sh")])
    output = project / "output"
    weights = output / "pytorch_lora_weights.safetensors"
    assert weights.is_file(), result.stderr[-2000:]
    # the first run fills both latent caches
    assert "'shapes' latent cache: 0 reused, 24 encoded" in result.stderr
    assert "'shapes-cropped' latent cache: 0 reused, 24 encoded" in result.stderr
    assert "24 steps per epoch" in result.stderr

    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    before = _latent(pipeline, "a red circle on a white background")
    pipeline.load_lora_weights(output)
    after = _latent(pipeline, "a red circle on a white background")
    assert not torch.allclose(before, after), "the trained LoRA did not change generation"

    saved = load_file(weights)
    assert saved and all(key.startswith("unet.") for key in saved)
    assert any(".to_q." in key for key in saved) and any(".to_out.0." in key for key in saved)
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-30"]
    assert json.loads((output / "checkpoint-30" / "sampler.json").read_text())["epoch"] == 1


def test_tensorboard_has_one_loss_per_step(project: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((project / "output" / "logs").rglob("events.out.tfevents*"))
    assert event_files, "no TensorBoard event file written"
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    losses = accumulator.Scalars("loss")
    assert [event.step for event in losses] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(event.value)) for event in losses)
    learning_rates = [event.value for event in accumulator.Scalars("lr")]
    # constant_with_warmup over 2 steps: half the rate at step 1, the full rate after.
    assert learning_rates[0] == pytest.approx(5e-4) and learning_rates[-1] == pytest.approx(1e-3)


def _cache_files(project: Path) -> dict[str, int]:
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in (project / "cache").rglob("*.safetensors")}


def test_second_run_reencodes_nothing(project: Path) -> None:
    captions = {p.read_text(encoding="utf-8").strip() for p in (project / "data").glob("*.txt")}
    before = _cache_files(project)
    # a latent per image per dataset, an embed per caption, and the empty prompt's
    assert len(before) == 2 * 24 + len(captions) + 1
    result = _run(
        project,
        [sys.executable, str(REPO / "train.py"), "--output_dir", "output_again", "--max_train_steps", "1"],
    )
    assert _cache_files(project) == before, "a cache entry was rewritten"
    assert "'shapes' latent cache: 24 reused, 0 encoded" in result.stderr
    assert "'shapes-cropped' latent cache: 24 reused, 0 encoded" in result.stderr
    assert f"'text' text-embed cache: {len(captions) + 1} reused, 0 encoded" in result.stderr
    assert "encoded" not in result.stderr.replace(", 0 encoded", "")


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(project: Path) -> None:
    uninterrupted = project / "output"
    resumed = project / "output_resumed"
    # The state at step 15 of the uninterrupted run is exactly what a run
    # stopped after that checkpoint leaves behind.
    shutil.copytree(uninterrupted / "checkpoint-15", resumed / "checkpoint-15")
    result = _run(
        project,
        ["bash", str(REPO / "train.sh"), "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"],
    )
    assert "resumed from" in result.stderr and "at step 15" in result.stderr
    expected = load_file(uninterrupted / "pytorch_lora_weights.safetensors")
    actual = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:  # bitwise: same data order, noise, optimizer state
        assert torch.equal(expected[key], actual[key]), key
