"""The memory estimate: parameters from file headers, the meta-device trace, --estimate_memory and the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simpletuner.config.loader import load_config
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.memory.params import count_component
from simpletuner.tools.demo_data import make_demo_dataset
from weightless import header_only_copy as _header_only_copy

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("sdxl", "legacy", "kolors", "pixart_sigma", "sd3", "flux")


def _config(family: str, model: Path, *extra: str):
    return load_config(["--model_family", family, "--pretrained_model_name_or_path", str(model),
                        "--data_backend_config", "unused.json", *extra], env={}, cwd=REPO)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family_name", FAMILIES)
def test_header_counts_equal_the_loaded_modules(family_name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{family_name}")
    family = get_family(family_name, _config(family_name, model))
    source = ModelSource(base=str(model))
    text = family.load_text_encoders(source)
    loaded = dict(zip([c for c in family.weight_components() if c.startswith("text_encoder")], text.encoders))
    loaded["vae"] = family.load_vae(source)
    loaded[family.denoiser_component] = family.load_denoiser(source)
    assert set(loaded) == set(family.weight_components())
    for name, module in loaded.items():
        counted = count_component(name, model / name)
        # The files also hold persistent buffers (ChatGLM's rotary frequencies): memory all the same.
        state = module.state_dict()
        buffers = sum(b.numel() for key, b in module.named_buffers() if key in state)
        assert counted is not None and counted.parameters == _numel(module) + buffers, name


@pytest.mark.parametrize("family_name", ["sdxl", "flux"])
def test_skeleton_trains_what_the_real_adapter_trains(family_name: str, request: pytest.FixtureRequest) -> None:
    from simpletuner.memory.skeleton import build_skeleton
    from simpletuner.training.trainable import trainable_for

    model = request.getfixturevalue(f"tiny_{family_name}")
    config = _config(family_name, model, "--lora_rank", "4")
    family = get_family(family_name, config)
    skeleton = build_skeleton(family, ModelSource(base=str(model)), config, torch.bfloat16)
    real = family.load_denoiser(ModelSource(base=str(model)))
    total = _numel(real)
    real.requires_grad_(False)
    trainable = trainable_for(config, family)
    trainable.prepare(real)
    assert skeleton.trained_parameters == sum(p.numel() for p in trainable.parameters(real)) > 0
    assert skeleton.frozen_parameters == total
    assert skeleton.linear_weight_parameters == sum(
        m.weight.numel() for n, m in real.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n)


def _real_saved_bytes(family, denoiser, latent_shape) -> int:
    """What autograd saves in a real CPU forward pass, counted like the meta trace counts."""
    from simpletuner.memory.activations import _SavedBytes

    saved = _SavedBytes(parameter_ids={id(p) for p in denoiser.parameters()})
    noisy = torch.randn(1, *latent_shape)
    batch = family.example_text_batch(denoiser.config, 1)
    inputs = family.model_inputs(batch, noisy, torch.full((1,), 500.0))
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        denoiser(**inputs)
    return saved.total


@pytest.mark.parametrize("family_name", ["sdxl", "flux"])
def test_meta_trace_matches_a_real_forward_pass(family_name: str, request: pytest.FixtureRequest) -> None:
    from simpletuner.memory.activations import trace_activations
    from simpletuner.memory.skeleton import build_skeleton

    model = request.getfixturevalue(f"tiny_{family_name}")
    config = _config(family_name, model, "--mixed_precision", "no")
    family = get_family(family_name, config)
    source = ModelSource(base=str(model))
    channels = json.loads((model / "vae" / "config.json").read_text())["latent_channels"]
    shape = (channels, 16, 16)
    skeleton = build_skeleton(family, source, config, torch.float32)
    traced = trace_activations(family, skeleton.module, 1, shape, torch.float32)
    real = family.load_denoiser(source).requires_grad_(False)
    from simpletuner.training.trainable import trainable_for

    trainable_for(config, family).prepare(real)
    real.train()
    measured = _real_saved_bytes(family, real, shape)
    assert traced.without_checkpointing == measured
    # Checkpointing keeps less, and a larger bucket keeps more (Flux's 512 text tokens do not grow).
    assert traced.with_checkpointing < traced.without_checkpointing
    larger = trace_activations(family, skeleton.module, 1, (channels, 32, 32), torch.float32)
    assert larger.without_checkpointing > 1.3 * traced.without_checkpointing




def _train(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _backend(tmp_path: Path, resolution: int = 64) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        make_demo_dataset(data, count=4)
    path = tmp_path / "multidatabackend.json"
    path.write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "vae"),
         "caption_strategy": "textfile", "resolution": resolution},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
         "cache_dir": str(tmp_path / "text")},
    ]), encoding="utf-8")
    return path


def test_estimate_memory_reads_headers_only_and_exits(tmp_path: Path, tiny_sdxl: Path) -> None:
    model = _header_only_copy(tiny_sdxl, tmp_path / "model")
    backend = _backend(tmp_path, resolution=128)
    result = _train(tmp_path, "--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
                    "--data_backend_config", str(backend), "--estimate_memory")
    assert result.returncode == 0, result.stderr[-2000:]
    unet = count_component("unet", tiny_sdxl / "unet").parameters
    assert f"unet {unet / 1e6:.1f} M" in result.stdout
    assert "batch 1 at 128x128" in result.stdout  # the dataset's resolution, not --resolution's default
    assert "activations:" in result.stdout and "peak:" in result.stdout
    assert not (tmp_path / "output").exists() and not (tmp_path / "vae").exists()


@pytest.mark.slow
def test_a_run_that_cannot_fit_stops_before_loading_unless_overridden(tmp_path: Path, tiny_sdxl: Path) -> None:
    backend = _backend(tmp_path)
    flags = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
             "--data_backend_config", str(backend), "--output_dir", "out", "--cache_only",
             "--memory_limit_gb", "0.001"]
    refused = _train(tmp_path, *flags)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "exceeds --memory_limit_gb (1 MiB)" in errors[0] and "--skip_memory_check" in errors[0]
    # Discovery ran (it precedes the check), but no latent was encoded: nothing was loaded.
    assert not any((tmp_path / "vae").rglob("*.safetensors"))
    allowed = _train(tmp_path, *flags, "--skip_memory_check")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert any((tmp_path / "vae").rglob("*.safetensors"))  # it went on to load the VAE and encode
    assert "memory estimate (batch 1 at 64x64" in allowed.stderr


def test_a_quantised_load_is_estimated_block_by_block(tiny_sdxl: Path, monkeypatch) -> None:
    """quanto/torchao load block by block (quantisation/streaming.py): RAM holds the quantised
    model plus one block, never the whole model at full width as an unquantised load does."""
    from simpletuner.memory.report import estimate_for_run

    # Blocks as small against the tiny model as real blocks are against SDXL's UNet.
    monkeypatch.setattr("simpletuner.quantisation.streaming.BLOCK_PARAMETERS", 4096)
    family = get_family("sdxl", None)
    plain = estimate_for_run(_config("sdxl", tiny_sdxl), family, ModelSource(base=str(tiny_sdxl)), (64, 64))
    quantised = estimate_for_run(_config("sdxl", tiny_sdxl, "--base_model_precision", "int8-quanto"), family,
                                 ModelSource(base=str(tiny_sdxl)), (64, 64))
    trained = quantised.training["trained weights"]
    assert quantised.loading - trained < plain.loading - plain.training["trained weights"]
    assert quantised.loading - trained >= quantised.training["frozen weights"]


@pytest.mark.parametrize("family_name", ["sdxl", "flux"])
def test_a_quantised_step_holds_its_largest_quantised_layer_dequantised(family_name: str,
                                                                        request: pytest.FixtureRequest) -> None:
    """The backend dequantises one layer at a time in forward/backward: the step's peak has the
    largest layer the family lets quantisation touch, at the precision's measured workspace."""
    from simpletuner.memory.report import estimate_for_run
    from simpletuner.quantisation.apply import quantise, quantised_layer_names
    from simpletuner.quantisation.precisions import get_precision

    model = request.getfixturevalue(f"tiny_{family_name}")
    family = get_family(family_name, None)
    source = ModelSource(base=str(model))
    plain = estimate_for_run(_config(family_name, model), family, source, (64, 64))
    quantised = estimate_for_run(_config(family_name, model, "--base_model_precision", "int8-quanto"), family,
                                 source, (64, 64))
    assert "dequantised layer" not in plain.training
    real = family.load_denoiser(source).requires_grad_(False)
    quantise(real, "int8-quanto", family.quantisation_exclude)
    largest = max(real.get_submodule(name).weight.numel() for name in quantised_layer_names(real))
    assert quantised.training["dequantised layer"] == int(largest * get_precision("int8-quanto").step_workspace) > 0
