"""--lora_format comfyui: kohya-layout LoRAs that diffusers' own loaders read back.

The proof: a tiny LoRA is trained twice with the same seed, saved once in each
layout, and each file is loaded with the pipeline's ``load_lora_weights`` into a
fresh pipeline; both must generate the same latents, unlike the base model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from family_harness import train_in_process, write_two_class_project
from simpletuner.config.loader import load_config
from simpletuner.config.options import KOHYA_LORA_FAMILIES, MODEL_FAMILIES
from simpletuner.errors import ConfigError, ModelError
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.training.lora_formats import LORA_WEIGHT_NAME, check_kohya_layout, modules_diffusers_recovers, to_kohya

REPO = Path(__file__).resolve().parents[1]

RANK, ALPHA = 4, 2  # alpha != rank, so a loader that ignores alpha gives another result


def _generate(pipeline, prompt: str = "red") -> torch.Tensor:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        prompt, num_inference_steps=2, height=64, width=64, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.mark.parametrize("family_name, fixture", [("sdxl", "tiny_sdxl"), ("flux", "tiny_flux")])
def test_comfyui_file_loads_into_the_pipeline_like_the_diffusers_file(
    family_name: str, fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(fixture)
    root = write_two_class_project(tmp_path, per_class=2)
    flags = ("--max_train_steps", "2", "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), "--learning_rate", "1e-2")
    outputs = {
        layout: train_in_process(root, model, family_name, *flags, "--lora_format", layout,
                                 "--checkpointing_steps", "2", output_name=layout)
        for layout in ("diffusers", "comfyui")
    }
    family = get_family(family_name, None)
    prefix = family.kohya_lora_prefix

    kohya = load_file(outputs["comfyui"] / LORA_WEIGHT_NAME)
    modules = {key.rsplit(".", 2)[0] for key in kohya if key.endswith(".lora_down.weight")}
    assert modules and all(m.startswith(f"{prefix}_") and "." not in m for m in modules)
    for module in modules:
        assert float(kohya[f"{module}.alpha"]) == ALPHA
        assert kohya[f"{module}.lora_down.weight"].shape[0] == RANK
        assert f"{module}.lora_up.weight" in kohya
    assert set(kohya) == {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    # A checkpoint's LoRA is written in the same layout.
    assert set(load_file(outputs["comfyui"] / "checkpoint-2" / LORA_WEIGHT_NAME)) == set(kohya)

    source = ModelSource(base=str(model))
    generated = {}
    for layout, folder in outputs.items():
        pipeline = source.load_pipeline(family.pipeline_class())
        pipeline.load_lora_weights(str(folder))
        generated[layout] = _generate(pipeline)
    base = _generate(source.load_pipeline(family.pipeline_class()))
    assert torch.allclose(generated["comfyui"], generated["diffusers"], atol=1e-5, rtol=1e-4)
    assert (generated["comfyui"] - base).abs().max() > 1e-3, "the LoRA changed nothing"


@pytest.mark.parametrize("family_name", sorted(set(MODEL_FAMILIES) - set(KOHYA_LORA_FAMILIES)))
def test_comfyui_is_rejected_where_diffusers_cannot_load_it(family_name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--lora_format=comfyui is not available for --model_family={family_name}"):
        load_config(["--model_family", family_name, "--pretrained_model_name_or_path", "m",
                     "--data_backend_config", "d.json", "--lora_format", "comfyui"], env={}, cwd=tmp_path)


def test_comfyui_is_ignored_with_a_warning_for_a_full_fine_tune(tmp_path: Path) -> None:
    config = load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config",
                          "d.json", "--model_type", "full", "--lora_format", "comfyui"], env={}, cwd=tmp_path)
    assert config.ignored == ("--lora_format=comfyui has no effect: only --model_type lora trains an adapter "
                              "(a full fine-tune updates every weight); ignoring it",)
    assert config.lora_format == "diffusers"


def test_family_prefixes_match_the_option_table() -> None:
    for name in MODEL_FAMILIES:
        family = get_family(name, None)
        assert (family.kohya_lora_prefix is not None) == (name in KOHYA_LORA_FAMILIES), name


def _state(*modules: str) -> dict[str, torch.Tensor]:
    state = {}
    for module in modules:
        state[f"{module}.lora_A.weight"] = torch.randn(RANK, 8)
        state[f"{module}.lora_B.weight"] = torch.randn(8, RANK)
    return state


def test_targets_the_flux_loader_cannot_map_back_fail_before_training() -> None:
    flux = get_family("flux", None)
    check_kohya_layout(flux, _state("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k"))
    # diffusers maps a kohya-named feed-forward layer of a Flux block onto the block itself.
    with pytest.raises(ModelError, match="--lora_format=comfyui.*--lora_target_modules"):
        check_kohya_layout(flux, _state("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj"))


def test_unet_targets_round_trip_through_the_sd_loader() -> None:
    sdxl = get_family("sdxl", None)
    modules = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
        "up_blocks.0.resnets.1.conv1", "down_blocks.0.resnets.0.time_emb_proj",
    }
    state = _state(*modules)
    kohya = to_kohya(state, sdxl.kohya_lora_prefix, ALPHA)
    # diffusers' own SDXL loader turns every kohya name back into the module it came from ...
    assert modules_diffusers_recovers(sdxl.pipeline_class(), kohya, sdxl.denoiser_component) == modules
    check_kohya_layout(sdxl, state)  # ... so the pre-training check lets them through,
    # while a module whose name its converter splits wrongly is stopped.
    with pytest.raises(ModelError, match="onto the wrong layer.*--lora_target_modules"):
        check_kohya_layout(sdxl, _state(*modules, "add_embedding.linear_1"))


@pytest.mark.slow
def test_comfyui_stops_before_training_when_a_target_would_load_wrongly(tmp_path: Path, tiny_sdxl: Path) -> None:
    """train.py with a config naming a target kohya maps wrongly: exit 2, one line, nothing trained or saved."""
    root = write_two_class_project(tmp_path, per_class=1)
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps({
        "--model_family": "sdxl", "--pretrained_model_name_or_path": str(tiny_sdxl),
        "--data_backend_config": str(root / "mdb.json"), "--output_dir": str(root / "output"),
        "--mixed_precision": "no", "--max_train_steps": "1", "--checkpointing_steps": "1", "--seed": "0",
        "--lora_format": "comfyui", "--lora_target_modules": "to_q,add_embedding.linear_1",
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "--lora_format=comfyui" in errors[0] and "--lora_target_modules" in errors[0], errors[0]
    assert "add.embedding" in errors[0] or "add_embedding" in errors[0], errors[0]
    # Stopped before the first step: no checkpoint, no weights.
    assert not list((root / "output").glob("checkpoint-*"))
    assert not list((root / "output").rglob("*lora_weights.safetensors"))


def test_every_module_carries_its_alpha_and_the_header_describes_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    family = get_family("sdxl", SimpleNamespace(lora_format="comfyui", lora_rank=RANK, lora_alpha=ALPHA))
    state = _state("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k")
    family.save_lora(tmp_path, state)
    with safe_open(str(tmp_path / LORA_WEIGHT_NAME), framework="pt") as file:
        header = file.metadata()
        keys = set(file.keys())
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k"
    assert keys == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert header["ss_network_alpha"] == str(ALPHA) and header["ss_network_dim"] == str(RANK)
    assert to_kohya(state, "lora_unet", ALPHA)[f"{name}.lora_down.weight"].equal(
        state["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight"])
