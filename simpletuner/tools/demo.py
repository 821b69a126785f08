"""An offline demo of the whole path: ``python -m simpletuner.tools.demo``.

It writes a tiny random model, a small captioned dataset and the config
files a user would write (``config/config.json``, ``config/multidatabackend.json``)
into a demo folder, runs ``train.sh`` there exactly as a user would, and
finally loads the trained LoRA into the family's diffusers pipeline to show
that it changes what the model generates.  No network is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]


def write_demo_project(folder: Path, model_family: str = "sdxl", steps: int = 20) -> Path:
    """Create model, data and config files in ``folder``; return the model path."""
    from simpletuner.tools.demo_data import make_demo_dataset
    from simpletuner.tools.tiny_model import make_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(model_family, folder / f"tiny-{model_family}")
    make_demo_dataset(folder / "data", count=24)
    config_dir = folder / "config"
    config_dir.mkdir(exist_ok=True)
    datasets = [
        {
            "id": "shapes", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae/shapes",
            "caption_strategy": "textfile", "resolution": 64, "resolution_type": "pixel_area",
            "aspect_bucket_alignment": 16, "crop": False,
        },
        {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ]
    (config_dir / "multidatabackend.json").write_text(json.dumps(datasets, indent=2), encoding="utf-8")
    config = {
        "model_family": model_family, "pretrained_model_name_or_path": str(model),
        "data_backend_config": "config/multidatabackend.json", "output_dir": "output",
        "model_type": "lora", "lora_rank": 8, "learning_rate": "1e-3", "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 2, "train_batch_size": 2, "max_train_steps": steps, "checkpointing_steps": steps // 2,
        "checkpoints_total_limit": 2, "seed": 42, "mixed_precision": "bf16", "report_to": "tensorboard",
    }
    (config_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return model


def show_effect(folder: Path, model: Path, model_family: str) -> float:
    """Mean absolute change the LoRA makes to a 2-step generation's latents."""
    import torch

    from simpletuner.families.registry import get_family
    from simpletuner.logs import quiet_libraries

    quiet_libraries()
    family = get_family(model_family)
    pipeline = family.pipeline_class().from_pretrained(model)
    pipeline.set_progress_bar_config(disable=True)

    def generate() -> torch.Tensor:
        return pipeline(
            "a red circle on a white background", num_inference_steps=2, height=64, width=64,
            output_type="latent", generator=torch.Generator().manual_seed(0),
        ).images

    before = generate()
    family.load_lora(pipeline, folder / "output")
    return (generate() - before).abs().mean().item()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("demo"))
    parser.add_argument("--model_family", default="sdxl")
    parser.add_argument("--max_train_steps", type=int, default=20)
    args = parser.parse_args(argv)
    from simpletuner.logs import setup_logging

    # Before the first torch import: library chatter stays off the console.
    setup_logging(os.environ)
    folder = args.output_dir.resolve()
    model = write_demo_project(folder, args.model_family, args.max_train_steps)
    print(f"demo project written to {folder}; training with train.sh ...", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    result = subprocess.run(["bash", str(REPO / "train.sh")], cwd=folder, env=env)
    if result.returncode != 0:
        return result.returncode
    change = show_effect(folder, model, args.model_family)
    print(f"trained LoRA: {folder / 'output' / 'pytorch_lora_weights.safetensors'}")
    print(f"mean change the LoRA makes to a fixed-seed generation's latents: {change:.4f}")
    return 0 if change > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
