"""A model in the SDXL refiner's layout (img2img pipeline, only the second text
encoder, an aesthetic score in its micro-conditioning) trains its design range
and round-trips through diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapter_harness import fresh_denoiser, output, train, trained_denoiser, write_project

pytestmark = pytest.mark.slow  # a training run with validation


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("sdxl", tmp_path_factory.mktemp("tiny_refiner") / "model", seed=0, flavour="refiner")


def test_a_refiner_layout_model_trains_its_range_with_the_aesthetic_score_and_loads_in_diffusers(
        tmp_path: Path, tiny_refiner: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    project = write_project(tmp_path)
    trainer, recorded = train(
        project, tiny_refiner, "sdxl", "--lora_rank", "4", "--max_train_steps", "4", "--learning_rate", "1e-2",
        "--train_batch_size", "2", "--data_aesthetic_score", "6.0",
        "--validation_prompt", "a red square", "--validation_steps", "4", "--validation_resolution", "32",
        "--validation_num_inference_steps", "4", "--disable_benchmark", record=True)
    assert trainer.family.refiner_layout
    timesteps = torch.cat([inputs["timestep"] for inputs in recorded.inputs])
    assert int(timesteps.max()) < 200, "the refiner's design range is the last 20% of the schedule"
    for inputs in recorded.inputs:
        time_ids = inputs["added_cond_kwargs"]["time_ids"]
        # original size, crop top-left, aesthetic score: five numbers, the last the score asked for.
        assert time_ids.shape[1] == 5 and torch.all(time_ids[:, 4] == 6.0)
        assert inputs["encoder_hidden_states"].shape[-1] == 32  # the second encoder's width alone

    # Validation ran in the refiner's own (img2img) pipeline, with the trained score.
    manifest = json.loads((project / "output" / "validation_images" / "step_000004" / "manifest.json").read_text())
    assert [image["prompt"] for image in manifest["images"]] == ["a red square", ""]

    trained, base = trained_denoiser(trainer), fresh_denoiser(trainer)
    inputs = recorded.inputs[-1]
    expected = output(trained, inputs)
    assert not torch.allclose(expected, output(base, inputs), atol=1e-4), "training changed nothing"
    pipeline = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_refiner)
    assert pipeline.text_encoder is None and pipeline.config.requires_aesthetics_score
    pipeline.load_lora_weights(str(project / "output"))
    assert torch.allclose(output(pipeline.unet.float().eval(), inputs), expected, atol=1e-5)


def test_full_range_trains_every_timestep(tmp_path: Path, tiny_refiner: Path) -> None:
    project = write_project(tmp_path)
    _, recorded = train(project, tiny_refiner, "sdxl", "--lora_rank", "4", "--max_train_steps", "6",
                        "--train_batch_size", "2", "--sdxl_refiner_uses_full_range", record=True)
    timesteps = torch.cat([inputs["timestep"] for inputs in recorded.inputs])
    assert int(timesteps.max()) >= 200  # 12 draws from 1000: all below 200 has chance 0.2^12
