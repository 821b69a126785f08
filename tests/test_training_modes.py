"""Full fine-tunes and LoRA target overrides, on the tiny SDXL model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.tools.demo_data import make_demo_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path) -> Path:
    make_demo_dataset(tmp_path / "data", count=8, sizes=((64, 64),))
    (tmp_path / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    return tmp_path


def _train(project: Path, model: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(model), "--data_backend_config", "mdb.json", "--output_dir", "out", "--max_train_steps", "3",
         "--train_batch_size", "2", "--learning_rate", "1e-3", "--seed", "1", *flags],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_full_fine_tune_saves_a_pipeline_that_from_pretrained_loads(tmp_path: Path, tiny_sdxl: Path) -> None:
    project = _project(tmp_path)
    _train(project, tiny_sdxl, "--model_type", "full", "--mixed_precision", "bf16", "--checkpointing_steps", "2")
    from diffusers import StableDiffusionXLPipeline

    trained = StableDiffusionXLPipeline.from_pretrained(project / "out")
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    changed = [name for name, p in trained.unet.named_parameters()
               if not torch.equal(p, dict(base.unet.named_parameters())[name])]
    assert changed, "no UNet weight changed"
    assert trained.unet.dtype == torch.float32, "full fine-tunes keep fp32 master weights"
    # the frozen components are the base model's own
    assert all(torch.equal(a, b) for a, b in zip(trained.vae.parameters(), base.vae.parameters()))
    assert not (project / "out" / "pytorch_lora_weights.safetensors").exists()
    assert (project / "out" / "checkpoint-2" / "trainable.safetensors").is_file()


def test_lora_target_modules_override_the_family_preset(tmp_path: Path, tiny_sdxl: Path) -> None:
    project = _project(tmp_path)
    _train(project, tiny_sdxl, "--lora_target_modules", "to_k,to_v", "--mixed_precision", "no")
    keys = load_file(project / "out" / "pytorch_lora_weights.safetensors").keys()
    assert any(".to_k." in k for k in keys) and any(".to_v." in k for k in keys)
    assert not any(".to_q." in k or ".to_out." in k for k in keys)
