"""--use_dora: PEFT's weight-decomposed LoRA, trained, saved and loaded back by diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapter_harness import fresh_denoiser, output, train, trained_denoiser, write_lycoris_config, write_project
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.families.registry import get_family
from simpletuner.training.trainable import LoraTraining

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def _config(tiny_sdxl: Path, tmp_path: Path, *extra: str):
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
            "--data_backend_config", "mdb.json", "--output_dir", "out", "--lora_rank", "4", *extra]
    return load_config(argv, env={}, cwd=tmp_path)


def test_use_dora_gives_each_lora_layer_a_magnitude_equal_to_the_weight_norms(tmp_path: Path,
                                                                               tiny_sdxl: Path) -> None:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    config = _config(tiny_sdxl, tmp_path, "--use_dora", "true")
    LoraTraining(config, get_family("sdxl", config)).prepare(model)
    layer = model.get_submodule(LAYER)
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad, "the magnitude is trained"
    # DoRA's start: the magnitude is the row norm of W (+ the zero update).
    assert torch.allclose(magnitude.detach(), layer.base_layer.weight.detach().norm(dim=1), atol=1e-5)


def test_without_use_dora_there_are_no_magnitudes(tmp_path: Path, tiny_sdxl: Path) -> None:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    config = _config(tiny_sdxl, tmp_path)
    LoraTraining(config, get_family("sdxl", config)).prepare(model)
    assert not model.get_submodule(LAYER).lora_magnitude_vector


@pytest.mark.parametrize("flags, message", [
    (("--lora_type", "lycoris"), "--use_dora is PEFT's DoRA for --lora_type standard; for LyCORIS set "
                                 "\"dora_wd\": true in --lycoris_config instead"),
    (("--lora_format", "comfyui"), "--use_dora cannot be saved with --lora_format comfyui; use --lora_format "
                                   "diffusers"),
    (("--lora_init_type", "pissa"), "--use_dora cannot be combined with --lora_init_type=pissa; use default or "
                                    "gaussian"),
])
def test_combinations_that_cannot_hold_dora_are_refused(tmp_path: Path, tiny_sdxl: Path, flags, message) -> None:
    lycoris = write_lycoris_config(tmp_path, {"algo": "lora", "multiplier": 1.0, "linear_dim": 4,
                                              "linear_alpha": 1})
    extra = ("--lycoris_config", str(lycoris)) if "lycoris" in flags else ()
    with pytest.raises(ConfigError) as caught:
        _config(tiny_sdxl, tmp_path, "--use_dora", "true", *flags, *extra)
    assert str(caught.value) == message
    _config(tiny_sdxl, tmp_path, *flags, *extra)  # the same settings without DoRA are fine


@pytest.mark.slow
def test_a_dora_run_saves_a_file_diffusers_loads_as_dora(tmp_path: Path, tiny_sdxl: Path) -> None:
    project = write_project(tmp_path)
    trainer, recorded = train(project, tiny_sdxl, "sdxl", "--use_dora", "true", "--lora_rank", "4",
                              "--max_train_steps", "3", "--learning_rate", "1e-2", "--train_batch_size", "2",
                              "--checkpointing_steps", "3", record=True)
    trained = trained_denoiser(trainer)
    base = fresh_denoiser(trainer)
    layer = trained.get_submodule(LAYER)
    magnitude = layer.lora_magnitude_vector["default"].weight.detach()
    assert not torch.allclose(magnitude, base.get_submodule(LAYER).weight.detach().norm(dim=1), atol=1e-6), \
        "the magnitudes did not train"
    inputs = recorded.inputs[-1]
    expected = output(trained, inputs)
    assert not torch.allclose(expected, output(base, inputs), atol=1e-4), "training changed nothing"
    for folder in (project / "output", project / "output" / "checkpoint-3"):
        with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as saved:
            assert any("lora_magnitude_vector" in key for key in saved.keys()), folder
        pipeline = trainer.family.pipeline_class().from_pretrained(tiny_sdxl)
        trainer.family.load_lora(pipeline, folder)
        denoiser = pipeline.unet.float().eval()
        assert denoiser.get_submodule(LAYER).lora_magnitude_vector, "diffusers loaded it without DoRA"
        assert torch.allclose(output(denoiser, inputs), expected, atol=1e-5), folder
