"""Nothing surprising happens silently on the data side: train.py run the way users ran it.

Each test writes a project folder (multidatabackend.json, images), runs
``train.py`` in a subprocess and reads its console, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from simpletuner.tools.demo_data import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _run(cwd: Path, module: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "train.py")] if module == "train" else [sys.executable, "-m", module]
    return subprocess.run([*command, *flags], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _flags(model: Path, *extra: str) -> list[str]:
    return ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
            "--data_backend_config", "multidatabackend.json", "--output_dir", "out",
            "--max_train_steps", "1", "--mixed_precision", "no", *extra]


def _train(cwd: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(cwd, "train", *_flags(model, *extra))


def _backend(project: Path, *datasets: dict) -> None:
    text = {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}
    (project / "multidatabackend.json").write_text(json.dumps([*datasets, text], indent=2), encoding="utf-8")


def _log(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stdout + result.stderr


def _latent_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


@pytest.mark.slow
def test_the_summary_says_what_the_plan_does_that_the_config_does_not(tmp_path: Path, tiny_sdxl: Path) -> None:
    """Two datasets and a regularisation set: rounding, upscaling, unused captions, each figure once."""
    make_demo_dataset(tmp_path / "subject", count=6, sizes=((40, 40),))  # upscaled to 128: 3.2x
    make_demo_dataset(tmp_path / "style", count=4, sizes=((256, 256),))
    make_demo_dataset(tmp_path / "reg", count=1, sizes=((128, 128),), seed=1)
    _backend(
        tmp_path,
        # The wizard's default caption_strategy, with .txt files beside every image.
        {"id": "subject", "instance_data_dir": "subject", "cache_dir_vae": "cache/subject", "resolution": 96,
         "caption_strategy": "filename"},
        {"id": "style", "instance_data_dir": "style", "cache_dir_vae": "cache/style", "resolution": 80,
         "crop": True, "crop_aspect": "square", "caption_strategy": "textfile"},
        {"id": "reg", "instance_data_dir": "reg", "cache_dir_vae": "cache/reg", "resolution": 64,
         "caption_strategy": "textfile", "is_regularisation_data": True},
    )
    result = _train(tmp_path, tiny_sdxl, "--train_batch_size", "2", "--cache_only")
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(result)
    # Sizes rounded by the bucket alignment, once per dataset.
    assert log.count("dataset 'subject': resolution 96 is not a multiple of aspect_bucket_alignment 64, "
                     "so it trains at 128") == 1
    assert log.count("dataset 'style': resolution 80 is not a multiple of aspect_bucket_alignment 64, "
                     "so it trains at 64 (64x64 square crops)") == 1
    assert "dataset 'reg': resolution" not in log
    # Images made bigger: how many and by how much.
    assert "dataset 'subject': 6 of 6 images upscaled to fill their bucket, up to 3.2x" in log
    assert "dataset 'style'" in log and "dataset 'style': 4 of 4 images upscaled" not in log
    # Caption files beside the images that caption_strategy filename does not read.
    assert "dataset 'subject': 6 of 6 images have a .txt caption file beside them that is not used" in log
    assert "dataset 'style': 4 of 4 images have a .txt" not in log
    # The regularisation set fills no batch of 2: it is said to be left out, and not how it trains.
    assert "dataset 'reg' yields no batch of 2" in log
    assert "trained toward the base model" not in log
    # Steps per epoch said once: 3 subject batches + 2 style batches.
    assert log.count("steps per epoch") == 1
    assert "5 steps per epoch (batch 2 x 1 process(es)); 1 steps in total" in log


@pytest.mark.slow
def test_an_image_dropped_while_caching_reprints_the_changed_totals(tmp_path: Path, tiny_sdxl: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    # A PNG whose header is sound but whose pixel data is not: only decoding finds it.
    raw = bytearray((data / "circle_000.png").read_bytes())
    start = raw.index(b"IDAT") + 8
    raw[start:start + 40] = bytes(b ^ 0x5A for b in raw[start:start + 40])
    (data / "circle_000.png").write_bytes(bytes(raw))
    _backend(tmp_path, {"id": "pics", "instance_data_dir": "data", "cache_dir_vae": "cache/pics",
                        "resolution": 64, "caption_strategy": "textfile"})
    result = _train(tmp_path, tiny_sdxl, "--num_train_epochs", "2", "--max_train_steps", "0", "--cache_only")
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(result)
    assert "4 steps per epoch (batch 1 x 1 process(es)); 8 steps in total" in log  # the summary, before caching
    reprint = [line for line in log.splitlines() if "the summary above changed" in line]
    assert len(reprint) == 1, log[-3000:]
    assert "dataset 'pics' now 3 images (was 4), 3 batches per epoch (was 4)" in reprint[0]
    assert "3 steps per epoch (was 4)" in reprint[0] and "6 steps in total (was 8)" in reprint[0]


@pytest.mark.slow
def test_random_crops_without_a_seed_reuse_the_cache_and_stale_entries_can_be_pruned(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    make_demo_dataset(tmp_path / "data", count=4, sizes=((96, 64),))
    crops = {"id": "pics", "instance_data_dir": "data", "cache_dir_vae": "cache/pics", "resolution": 64,
             "caption_strategy": "textfile", "crop": True, "crop_style": "random", "crop_aspect": "square"}
    _backend(tmp_path, crops)
    latents = tmp_path / "cache" / "pics" / "latents"
    for _ in range(2):  # no --seed: every run draws its own seed
        result = _train(tmp_path, tiny_sdxl, "--cache_only")
        assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset 'pics' latent cache: 4 reused, 0 encoded" in _log(result)
    assert len(_latent_files(latents)) == 4

    # A change that moves every crop leaves 4 entries nothing uses.
    _backend(tmp_path, {**crops, "resolution": 48, "aspect_bucket_alignment": 16})
    result = _train(tmp_path, tiny_sdxl, "--cache_only", "--override_dataset_config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset 'pics' latent cache: 0 reused, 4 encoded" in _log(result)
    assert "reclaim" not in _log(result)  # no advice to delete a folder still in use
    assert "prune_cache" in _log(result)
    unused = set(_latent_files(latents))
    assert len(unused) == 8
    (latents / "notes.safetensors").write_text("mine")  # not a name our cache writes

    listed = _run(tmp_path, "simpletuner.tools.prune_cache", *_flags(tiny_sdxl))
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "dataset 'pics' latents" in listed.stdout and "4 entries in use, 4 not used" in listed.stdout
    assert "dry run: nothing removed" in listed.stdout
    assert not listed.stderr.strip(), listed.stderr  # no library import chatter on the console
    assert set(_latent_files(latents)) == unused | {latents / "notes.safetensors"}

    pruned = _run(tmp_path, "simpletuner.tools.prune_cache", *_flags(tiny_sdxl), "--delete")
    assert pruned.returncode == 0 and "removed 4 unused entries" in pruned.stdout, pruned.stderr[-3000:]
    kept = set(_latent_files(latents))
    assert len(kept) == 5 and latents / "notes.safetensors" in kept
    listed_names = {line.strip() for line in listed.stdout.splitlines() if line.startswith("  ")}
    assert {str(p.relative_to(latents)) for p in unused - kept} == listed_names  # only what was listed
    result = _train(tmp_path, tiny_sdxl, "--cache_only")  # what the run uses is still there
    assert "dataset 'pics' latent cache: 4 reused, 0 encoded" in _log(result)


@pytest.mark.slow
def test_a_settings_change_stops_the_run_only_when_what_is_encoded_changes(tmp_path: Path, tiny_sdxl: Path) -> None:
    make_demo_dataset(tmp_path / "data", count=2, sizes=((64, 64),))
    entry = {"id": "pics", "instance_data_dir": "data", "cache_dir_vae": "cache/pics", "resolution": 64,
             "caption_strategy": "textfile"}
    _backend(tmp_path, entry)
    assert _train(tmp_path, tiny_sdxl, "--cache_only").returncode == 0
    # 80 rounds to 64 with alignment 64: the same buckets, crops and latents.
    _backend(tmp_path, {**entry, "resolution": 80})
    same = _train(tmp_path, tiny_sdxl, "--cache_only")
    assert same.returncode == 0, same.stderr[-3000:]
    log = _log(same)
    assert "resolution: 64 -> 80" in log and "every image keeps its size and crop" in log
    assert "dataset 'pics' latent cache: 2 reused, 0 encoded" in log
    # 128 changes every latent: stopped, with exit code 2 and one line saying what to do.
    _backend(tmp_path, {**entry, "resolution": 128})
    stopped = _train(tmp_path, tiny_sdxl, "--cache_only")
    assert stopped.returncode == 2
    errors = [line for line in _log(stopped).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "resolution: 80 -> 128" in errors[0] and "--override_dataset_config" in errors[0]


@pytest.mark.parametrize("file_name, text, line", [
    ("multidatabackend.json", '[\n  {"id": "pics", "instance_data_dir": "data"},\n  {"id": "text",\n'
                              '   "dataset_type": "text_embeds"},\n]\n', "line 4, column 34"),
    ("config/config.json", '{\n  "model_family": "sdxl",\n  "lora_rank": 4,\n}\n', "line 3, column 17"),
])
def test_a_trailing_comma_is_reported_on_its_own_line(
    tmp_path: Path, tiny_sdxl: Path, file_name: str, text: str, line: str
) -> None:
    (tmp_path / "config").mkdir()
    if file_name != "multidatabackend.json":
        (tmp_path / "multidatabackend.json").write_text("[]")
    (tmp_path / file_name).write_text(text, encoding="utf-8")
    result = _run(tmp_path, "train", "--data_backend_config", "multidatabackend.json",
                  "--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl), "--output_dir", "out")
    assert result.returncode == 2
    errors = [entry for entry in result.stderr.splitlines() if entry.startswith("error:")]
    assert errors and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert file_name in errors[0] and line in errors[0] and "trailing comma" in errors[0], errors[0]
