"""Each key ingredient, changed for real between runs, re-encodes exactly what it shaped.

The unit tests in test_caching.py show each ingredient enters the key; here a
real run after each change shows the effect a user sees: the entries that
changed are encoded, the rest reused.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cache_helpers import log_text
from family_harness import train_in_process, write_two_class_project

pytestmark = pytest.mark.slow


def _counts(caplog, what: str) -> tuple[int, int]:
    found = re.findall(rf"'{what}' (?:latent|text-embed) cache: (\d+) reused, (\d+) encoded", log_text(caplog))
    assert found, log_text(caplog)[-2000:]
    reused, encoded = found[-1]
    return int(reused), int(encoded)


def _cache(root: Path, model: Path, caplog, *flags: str) -> tuple[tuple[int, int], tuple[int, int]]:
    caplog.clear()
    train_in_process(root, model, "sdxl", "--cache_only", *flags)
    return _counts(caplog, "classes"), _counts(caplog, "text")


def _edit_dataset(root: Path, **keys) -> None:
    entries = json.loads((root / "mdb.json").read_text())
    entries[0].update(keys)
    (root / "mdb.json").write_text(json.dumps(entries))


def test_each_ingredient_re_encodes_what_it_shaped(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO)
    root = write_two_class_project(tmp_path, per_class=2)  # 4 images, captions "red" and "blue"
    assert _cache(root, tiny_sdxl, caplog) == ((0, 4), (0, 3))  # + the empty prompt
    assert _cache(root, tiny_sdxl, caplog) == ((4, 0), (3, 0))

    # A caption file edited: one new text entry, no latent.
    (root / "data" / "red_0.txt").write_text("a red square", encoding="utf-8")
    assert _cache(root, tiny_sdxl, caplog) == ((4, 0), (3, 1))

    # A caption filter list: the filtered captions are new text entries.
    (root / "filters.txt").write_text("s/blue/azure/\n", encoding="utf-8")
    _edit_dataset(root, caption_filter_list=str(root / "filters.txt"))
    assert _cache(root, tiny_sdxl, caplog) == ((4, 0), (3, 1))  # "azure" is new; "blue" no longer asked for

    # The resolution: every latent (accepted with --override_dataset_config, since latents exist).
    _edit_dataset(root, resolution=48)
    assert _cache(root, tiny_sdxl, caplog, "--override_dataset_config") == ((0, 4), (4, 0))

    # The crop window: a corner crop of a non-square image moves the window.
    from PIL import Image

    Image.new("RGB", (96, 64), (200, 30, 30)).save(root / "data" / "red_wide.png")
    (root / "data" / "red_wide.txt").write_text("red", encoding="utf-8")
    _edit_dataset(root, crop=True, crop_style="center", crop_aspect="square")
    (first_latents, _texts) = _cache(root, tiny_sdxl, caplog, "--override_dataset_config")
    assert first_latents == (4, 1), "square images keep their geometry under a square crop; the new one is encoded"
    _edit_dataset(root, crop_style="corner")
    (latents, _texts) = _cache(root, tiny_sdxl, caplog, "--override_dataset_config")
    assert latents == (4, 1), "only the non-square image has a different corner crop"

    # The VAE: another VAE (here the same weights at another path) re-encodes every latent.
    shutil.copytree(tiny_sdxl / "vae", tmp_path / "other_vae")
    (latents, texts) = _cache(root, tiny_sdxl, caplog, "--pretrained_vae_model_name_or_path", str(tmp_path / "other_vae"))
    assert latents == (0, 5) and texts[1] == 0


def test_vae_weights_rewritten_in_place_re_encode_every_latent(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    """Same VAE path, new weights in the same file: the old latents are not the new VAE's."""
    import logging

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    caplog.set_level(logging.INFO)
    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)  # the session's model stays untouched
    root = write_two_class_project(tmp_path / "project", per_class=2)
    assert _cache(root, model, caplog) == ((0, 4), (0, 3))
    assert _cache(root, model, caplog) == ((4, 0), (3, 0))

    (weights,) = (model / "vae").glob("*.safetensors")
    state = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as file:
        metadata = file.metadata()
    save_file({name: tensor * 1.5 for name, tensor in state.items()}, str(weights), metadata=metadata)
    assert weights.stat().st_size == (tiny_sdxl / "vae" / weights.name).stat().st_size  # only the values differ
    assert _cache(root, model, caplog) == ((0, 4), (3, 0))
