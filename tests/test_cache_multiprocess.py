"""Two processes (accelerate launch, gloo on CPU) share the caching and then both train.

Each rank reports its own share: the shares add up to every entry exactly
once, every entry exists afterwards, and no rank goes past the caches before
all ranks have finished them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simpletuner.tools.demo_data import make_demo_dataset
from train_sh import run_train_sh, write_json

pytestmark = pytest.mark.slow
IMAGES = 12


def _project(root: Path, model: Path) -> Path:
    make_demo_dataset(root / "data", count=IMAGES, sizes=((64, 64),))
    write_json(root / "config" / "multidatabackend.json", [
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ])
    write_json(root / "config" / "config.json", {
        "--model_family": "sdxl", "--pretrained_model_name_or_path": str(model),
        "--data_backend_config": "config/multidatabackend.json", "--output_dir": "output",
        "--lora_rank": 4, "--learning_rate": 1e-3, "--train_batch_size": 1, "--vae_batch_size": 2,
        "--seed": 5, "--mixed_precision": "no", "--report_to": "none",
    })
    (root / "config" / "config.env").write_text("TRAINING_NUM_PROCESSES=2\n", encoding="utf-8")
    return root


def _shares(log: str, what: str) -> dict[int, tuple[int, int]]:
    """rank -> (reused, encoded) from each rank's cache report line."""
    found = re.findall(rf"{what} \(rank (\d) of 2\): (\d+) reused, (\d+) encoded", log)
    return {int(rank): (int(reused), int(encoded)) for rank, reused, encoded in found}


def test_two_processes_split_the_caching_and_both_train(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = _project(tmp_path, tiny_sdxl)
    prompts = len({p.read_text(encoding="utf-8") for p in (root / "data").glob("*.txt")}) + 1  # + the empty prompt

    log = run_train_sh(root, "--cache_only").stderr
    latents, texts = _shares(log, "'pics' latent cache"), _shares(log, "'text' text-embed cache")
    assert sorted(latents) == [0, 1] and sorted(texts) == [0, 1], log[-3000:]
    encoded = [latents[0][1], latents[1][1]]
    assert all(n > 0 for n in encoded) and sum(encoded) == IMAGES, latents
    assert texts[0][1] > 0 and texts[1][1] > 0 and texts[0][1] + texts[1][1] == prompts, texts
    # Every encode made a distinct entry: nothing was encoded twice, nothing is missing.
    assert len(list((root / "cache" / "vae").rglob("*.safetensors"))) == IMAGES
    assert len(list((root / "cache" / "text").rglob("*.safetensors"))) == prompts
    # Both ranks pass the barrier only after both reported their caches.
    lines = log.splitlines()
    done = [i for i, line in enumerate(lines) if "caches are complete" in line]
    reports = [i for i, line in enumerate(lines) if re.search(r"cache \(rank \d of 2\):", line)]
    assert len(done) == 2 and max(reports) < min(done), "\n".join(lines[-40:])

    log = run_train_sh(root, "--max_train_steps", "2").stderr
    assert _shares(log, "'pics' latent cache") == {0: (IMAGES // 2, 0), 1: (IMAGES // 2, 0)}
    assert "x 2 process(es)" in log
    assert (root / "output" / "pytorch_lora_weights.safetensors").is_file()
