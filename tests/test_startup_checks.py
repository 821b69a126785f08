"""Nothing surprising happens silently: train.py driven the way users met each surprise.

Each test runs ``train.py`` in a temporary project folder and checks what the
console says and the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simpletuner.tools.demo_data import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def _train(cwd: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND", "HF_HUB_OFFLINE", "HF_ENDPOINT")}
    base.update(PYTHONPATH=str(REPO), HF_HOME=str(cwd / "hf-home"), **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=cwd, env=base,
                          capture_output=True, text=True, timeout=600)


def _dataset(dataset_id: str, folder: Path, root: Path, **extra: object) -> dict:
    return {"id": dataset_id, "type": "local", "instance_data_dir": str(folder),
            "cache_dir_vae": str(root / "cache" / dataset_id), "caption_strategy": "textfile",
            "resolution": 64, "aspect_bucket_alignment": 16, **extra}


def _backend(root: Path, *datasets: dict) -> Path:
    path = root / "multidatabackend.json"
    text_embeds = {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
                   "cache_dir": str(root / "cache" / "text")}
    path.write_text(json.dumps([*datasets, text_embeds]), encoding="utf-8")
    return path


def _flags(family: str, model: str | Path, backend: Path, *extra: str) -> list[str]:
    return ["--model_family", family, "--pretrained_model_name_or_path", str(model),
            "--data_backend_config", str(backend), "--output_dir", "out", "--max_train_steps", "1",
            "--mixed_precision", "no", "--seed", "0", *extra]


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _cached_latents(root: Path) -> list[Path]:
    return list((root / "cache").rglob("*.safetensors")) if (root / "cache").exists() else []


# ------------------------------------------------------------- nothing to learn


@pytest.mark.slow
def test_only_regularisation_data_left_stops_before_the_denoiser_loads(tmp_path: Path, tiny_sdxl: Path) -> None:
    subject = make_demo_dataset(tmp_path / "subject", count=4, sizes=((64, 64),))
    for caption in subject.glob("*.txt"):
        caption.unlink()  # the user's subject dataset: no captions, so every image is left out
    regularisation = make_demo_dataset(tmp_path / "regularisation", count=4, sizes=((64, 64),), seed=1)
    backend = _backend(tmp_path, _dataset("subject", subject, tmp_path),
                       _dataset("regularisation", regularisation, tmp_path, is_regularisation_data=True))
    result = _train(tmp_path, *_flags("sdxl", tiny_sdxl, backend))
    (line,) = _error_lines(result)
    assert "nothing to learn: only regularisation data remains ('regularisation')" in line
    assert "dataset(s) 'subject' give no batch" in line
    assert "Training" not in result.stderr and "loss" not in result.stderr
    assert _cached_latents(tmp_path) == [], "it stopped only after encoding"
    assert not list((tmp_path / "out").glob("*.safetensors"))


# -------------------------------------------------- the wrong family for the folder


def test_the_wrong_family_for_the_model_folder_is_named_before_encoding(tmp_path: Path, tiny_flux: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    result = _train(tmp_path, *_flags("sdxl", tiny_flux, _backend(tmp_path, _dataset("pics", data, tmp_path))))
    (line,) = _error_lines(result)
    assert f"--pretrained_model_name_or_path={tiny_flux}: holds a FluxPipeline (a --model_family flux model)" in line
    assert "not the StableDiffusionXLPipeline that --model_family=sdxl trains" in line
    assert _cached_latents(tmp_path) == [] and not (tmp_path / "out").exists()


def test_a_denoiser_folder_of_another_family_is_named(tmp_path: Path, tiny_sdxl: Path, tiny_flux: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    result = _train(tmp_path, *_flags("sdxl", tiny_sdxl, _backend(tmp_path, _dataset("pics", data, tmp_path)),
                                      "--pretrained_unet_model_name_or_path", str(tiny_flux / "transformer")))
    (line,) = _error_lines(result)
    assert f"--pretrained_unet_model_name_or_path={tiny_flux / 'transformer'}: holds a FluxTransformer2DModel" in line
    assert "not the UNet2DConditionModel that --model_family=sdxl trains" in line


# ------------------------------------------------------- a Hub id with no network


@pytest.mark.parametrize("network", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}],
                         ids=["unreachable", "offline"])
def test_an_uncached_hub_id_without_network_fails_at_once_in_one_line(tmp_path: Path, network: dict) -> None:
    data = make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    backend = _backend(tmp_path, _dataset("pics", data, tmp_path))
    started = time.monotonic()
    result = _train(tmp_path, *_flags("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", backend), env=network)
    elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: --pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0: "
                               "not in the local Hugging Face cache")
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in lines[0]
    assert ("HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in network else "cannot be reached") in lines[0]
    assert elapsed < 20, f"took {elapsed:.0f} s (diffusers' retries took ~37 s)"  # start-up itself is ~5 s here
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------- every mistake at once


def test_every_key_and_value_mistake_of_both_files_is_reported_in_one_run(tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    backend = _backend(
        tmp_path,
        _dataset("pics", data, tmp_path, resolution="big", crop_style="middle"),
        _dataset("more", data, tmp_path, repeat=2),
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "--model_family": "sdxl", "--pretrained_model_name_or_path": "model", "--data_backend_config": str(backend),
        "--learning_rat": 1e-4, "--train_batch_size": "two", "--lr_scheduler": "sometimes",
    }), encoding="utf-8")
    result = _train(tmp_path, env={"CONFIG_PATH": str(config)})
    lines = _error_lines(result)
    assert len(lines) == 6, "\n".join(lines)
    expected = [
        "unknown option --learning_rat; did you mean --learning_rate?",
        "--train_batch_size must be a whole number, got 'two'",
        "--lr_scheduler got 'sometimes'",
        "dataset 'pics': key 'resolution' must be a number, got 'big'",
        "dataset 'pics': key 'crop_style' got 'middle'",
        "dataset 'more': unknown key repeat; did you mean repeats?",
    ]
    for line, fragment in zip(lines, expected):
        assert fragment in line, (fragment, line)
    assert all(str(config) in line for line in lines[:3])


# ------------------------------------------- options without effect, LyCORIS preset


@pytest.mark.slow
def test_options_without_effect_and_preset_misses_are_named_once(tmp_path: Path, tiny_flux: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", count=2, sizes=((64, 64),))
    preset = tmp_path / "lycoris.json"
    # The shipped example before the fix: Flux's attention class is FluxAttention.
    preset.write_text(json.dumps({"algo": "lokr", "linear_dim": 4, "linear_alpha": 1, "factor": 4,
                                  "apply_preset": {"target_module": ["Attention", "FeedForward"]}}))
    result = _train(tmp_path, *_flags("flux", tiny_flux, _backend(tmp_path, _dataset("pics", data, tmp_path)),
                                      "--lora_type", "lycoris", "--lycoris_config", str(preset),
                                      "--lora_rank", "32", "--prediction_type", "v_prediction"))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line.split(" WARNING ", 1)[1] for line in result.stderr.splitlines() if " WARNING " in line]
    expected = [
        "--lora_rank=32 has no effect: with --lora_type lycoris the adapter comes from --lycoris_config",
        "--prediction_type=v_prediction has no effect: only --model_family sdxl, legacy, kolors, pixart_sigma use it",
        f"--lycoris_config={preset}: target_module 'Attention' matches no layer of the FluxTransformer2DModel; "
        "its attention class is FluxAttention",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in warnings) == 1, (fragment, warnings)
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()
