"""Shared proof that a family trains the right thing: it learns two classes.

Two solid-colour classes with different captions are trained (a full
fine-tune of a tiny model, in this process), then the family's own diffusers
pipeline samples from noise for each caption.  The sampled latents must be
closer to their own class's latents than to the other class's, and closer
than the untrained model's samples were.  A wrong target, sign or scaling
trains happily but fails this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

CLASSES = {"red": (230, 20, 20), "blue": (20, 40, 230)}


@dataclass
class Separation:
    own: float  # mean distance of samples to their own class's latents
    other: float  # mean distance to the other class's latents

    @property
    def margin(self) -> float:
        return self.other - self.own


def write_two_class_project(root: Path, size: int = 64, per_class: int = 8) -> Path:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, colour in CLASSES.items():
        for index in range(per_class):
            Image.new("RGB", (size, size), colour).save(data / f"{name}_{index}.png")
            (data / f"{name}_{index}.txt").write_text(name, encoding="utf-8")
    (root / "mdb.json").write_text(json.dumps([
        {"id": "classes", "type": "local", "instance_data_dir": str(data), "cache_dir_vae": str(root / "cache/vae"),
         "caption_strategy": "textfile", "resolution": size, "resolution_type": "pixel", "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(root / "cache/text")},
    ]), encoding="utf-8")
    return root


def train_in_process(root: Path, model: Path, family: str, *flags: str, output_name: str = "output") -> Path:
    """Run the real Trainer on the two-class project; returns the output folder."""
    from accelerate.state import AcceleratorState

    from simpletuner.config.loader import load_config
    from simpletuner.training.trainer import Trainer

    output = root / output_name
    argv = [
        "--model_family", family, "--pretrained_model_name_or_path", str(model),
        "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(output),
        "--mixed_precision", "no", "--seed", "0", "--checkpointing_steps", "100000", *flags,
    ]
    config = load_config(argv, env={}, cwd=root)
    AcceleratorState._reset_state(reset_partial_state=True)  # one process, several runs
    Trainer(config, show_progress=False).run()
    return output


def class_latents(encode: Callable[[torch.Tensor], torch.Tensor], size: int = 64) -> dict[str, torch.Tensor]:
    """The latents of one image of each class, as the family's encoder produces them."""
    result = {}
    for name, colour in CLASSES.items():
        pixels = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size) / 127.5 - 1
        result[name] = encode(pixels)[0]
    return result


def separation(sample: Callable[[str, int], torch.Tensor], targets: dict[str, torch.Tensor], seeds: int = 3) -> Separation:
    """Mean distances of ``sample(caption, seed)`` latents to own/other class latents."""
    own, other = [], []
    names = list(targets)
    for name in names:
        rival = names[1 - names.index(name)]
        for seed in range(seeds):
            latents = sample(name, seed).float()
            own.append((latents - targets[name]).pow(2).mean().sqrt().item())
            other.append((latents - targets[rival]).pow(2).mean().sqrt().item())
    return Separation(sum(own) / len(own), sum(other) / len(other))


def assert_learned(before: Separation, after: Separation) -> None:
    # A clear margin, not just own < other: a model trained on the wrong target
    # (epsilon sampled as v, say) still lands marginally closer by chance.
    assert after.margin > 0.1 * after.own, f"samples are not clearly closer to their own class: {after}"
    assert after.own < 0.7 * before.own, f"training did not move samples toward their class: {before} -> {after}"
    assert after.margin > before.margin, f"classes did not separate: {before} -> {after}"


def pipeline_sampler(pipeline: Any, size: int = 64, steps: int = 20, **kwargs: Any) -> Callable[[str, int], torch.Tensor]:
    pipeline.set_progress_bar_config(disable=True)

    def sample(prompt: str, seed: int) -> torch.Tensor:
        return pipeline(
            prompt, num_inference_steps=steps, height=size, width=size, output_type="latent",
            generator=torch.Generator().manual_seed(seed), **kwargs,
        ).images[0]

    return sample
