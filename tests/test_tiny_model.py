"""Tests for simpletuner.tools.tiny_model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simpletuner.errors import ConfigError
from simpletuner.tools.tiny_model import available_builders, make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]

SDXL_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
]


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_builders_registry():
    assert "sdxl" in available_builders()


def test_sdxl_layout(tiny_sdxl):
    for name in SDXL_FILES:
        assert (tiny_sdxl / name).is_file(), name
    total = sum(p.stat().st_size for p in tiny_sdxl.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"tiny model is {total} bytes"


def test_sdxl_weights_load_cleanly(tiny_sdxl):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    loaders = [
        (UNet2DConditionModel, "unet"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
        (CLIPTextModelWithProjection, "text_encoder_2"),
    ]
    for cls, sub in loaders:
        _, info = cls.from_pretrained(tiny_sdxl, subfolder=sub, output_loading_info=True)
        assert not info["missing_keys"], (sub, info["missing_keys"])
        assert not info["unexpected_keys"], (sub, info["unexpected_keys"])


def test_sdxl_config_consistency(sdxl_pipeline):
    pipe = sdxl_pipeline
    unet, te1, te2 = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == te2.projection_dim + 6 * unet.addition_time_embed_dim
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.vae.config.scaling_factor == pytest.approx(0.13025)
    sched = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (sched.prediction_type, sched.timestep_spacing, sched.steps_offset) == ("epsilon", "leading", 1)
    for cfg, tok in ((te1, pipe.tokenizer), (te2, pipe.tokenizer_2)):
        assert cfg.vocab_size == len(tok)
        assert cfg.max_position_embeddings == 77
        assert cfg.bos_token_id == tok.bos_token_id
        assert cfg.eos_token_id == tok.eos_token_id
    # PEFT LoRA targets use the diffusers default attention projection names.
    module_names = [n for n, _ in pipe.unet.named_modules()]
    for suffix in (".to_q", ".to_k", ".to_v", ".to_out.0"):
        assert any(n.endswith(suffix) for n in module_names), suffix


def test_sdxl_generation_is_deterministic(sdxl_pipeline):
    def run(output_type):
        generator = torch.Generator("cpu").manual_seed(0)
        return sdxl_pipeline(
            "a red square",
            num_inference_steps=2,
            height=64,
            width=64,
            output_type=output_type,
            generator=generator,
        ).images

    first, second = run("latent"), run("latent")
    assert first.shape == (1, 4, 8, 8)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    images = run("pil")
    assert images[0].size == (64, 64)


def test_same_seed_same_weights(tiny_sdxl, tmp_path):
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    again = make_tiny_model("sdxl", tmp_path / "again", seed=0)
    other = make_tiny_model("sdxl", tmp_path / "other", seed=1)
    for name in SDXL_FILES:
        assert (again / name).read_bytes() == (tiny_sdxl / name).read_bytes(), name
    assert (other / unet_file).read_bytes() != (tiny_sdxl / unet_file).read_bytes()


def test_tokenizer_has_real_vocabulary(sdxl_pipeline):
    for tok in (sdxl_pipeline.tokenizer, sdxl_pipeline.tokenizer_2):
        assert len(tok) > 100
        ids = tok("a red square", add_special_tokens=False).input_ids
        assert len(ids) >= 3
        assert len(set(ids)) == len(ids)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == "a red square"
        padded = tok("a red square", padding="max_length", max_length=tok.model_max_length).input_ids
        assert len(padded) == 77
        assert padded[0] == tok.bos_token_id


def test_unknown_family_raises(tmp_path):
    with pytest.raises(ConfigError, match="sdxl"):
        make_tiny_model("nope", tmp_path / "x")


def test_cli_unknown_family_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simpletuner.tools.tiny_model",
            "--model_family",
            "nope",
            "--output_dir",
            str(tmp_path / "x"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "nope" in lines[0] and "sdxl" in lines[0]
    assert not (tmp_path / "x").exists()
