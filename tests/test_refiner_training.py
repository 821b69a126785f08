"""--refiner_training: each stage of an SDXL base + refiner chain trains on its
own part of the schedule, with exact bounds from --refiner_training_strength,
and bad combinations are refused before anything loads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.families.sdxl import SDXLFamily
from simpletuner.families.sdxl_stages import BASE, REFINER, StageSplit, stage_split

DRAWS = 20_000  # enough that every one of 1000 timesteps is drawn (miss chance < e^-19 each)


def _draws(**options) -> torch.Tensor:
    family = SDXLFamily(SimpleNamespace(**options))
    objective = family.make_objective(DDPMScheduler(num_train_timesteps=1000), SimpleNamespace(**options))
    latents = torch.zeros(DRAWS, 1, 1, 1)
    return objective.noise(latents, torch.Generator().manual_seed(0)).timesteps


@pytest.mark.parametrize("strength, low, high", [(0.2, 0, 199), (0.35, 0, 349), (0.5, 0, 499)])
def test_the_refiner_stage_draws_only_the_clean_end(strength: float, low: int, high: int) -> None:
    timesteps = _draws(refiner_training=True, refiner_training_strength=strength)
    assert (timesteps.min().item(), timesteps.max().item()) == (low, high)
    assert len(timesteps.unique()) == high - low + 1  # every timestep of the stage, none outside


@pytest.mark.parametrize("strength, low, high", [(0.2, 200, 999), (0.35, 350, 999)])
def test_the_inverted_schedule_trains_the_base_stage(strength: float, low: int, high: int) -> None:
    timesteps = _draws(refiner_training=True, refiner_training_strength=strength,
                       refiner_training_invert_schedule=True)
    assert (timesteps.min().item(), timesteps.max().item()) == (low, high)
    assert len(timesteps.unique()) == high - low + 1


def test_without_refiner_training_every_timestep_trains_as_before() -> None:
    timesteps = _draws()
    assert (timesteps.min().item(), timesteps.max().item()) == (0, 999)
    # The plain draw, number for number (no weights, so resumed old runs repeat).
    generator = torch.Generator().manual_seed(0)
    torch.randn(DRAWS, 1, 1, 1, generator=generator)  # the noise is drawn first
    expected = torch.randint(0, 1000, (DRAWS,), generator=generator)
    assert torch.equal(timesteps, expected)


def test_a_timestep_bias_applies_inside_the_stage() -> None:
    timesteps = _draws(refiner_training=True, refiner_training_strength=0.5, timestep_bias_strategy="range",
                       timestep_bias_begin=0, timestep_bias_end=250, timestep_bias_multiplier=0.0)
    assert (timesteps.min().item(), timesteps.max().item()) == (250, 499)


def test_a_bias_that_leaves_the_stage_empty_is_refused() -> None:
    with pytest.raises(ConfigError, match="leaves no timestep inside this stage's 0..199"):
        _draws(refiner_training=True, timestep_bias_strategy="range", timestep_bias_begin=0,
               timestep_bias_end=500, timestep_bias_multiplier=0.0)


def test_stages_meet_where_diffusers_hands_over() -> None:
    refiner, base = StageSplit(0.35, REFINER), StageSplit(0.35, BASE)
    assert refiner.pipeline_arguments() == {"denoising_start": pytest.approx(0.65)}
    assert base.pipeline_arguments() == {"denoising_end": pytest.approx(0.65)}
    # diffusers' cut-off timestep for a fraction f: round(T - f*T); the base keeps
    # timesteps at or above it, the refiner those below.
    cutoff = round(1000 - 0.65 * 1000)
    assert base.timesteps(1000).start == cutoff == refiner.timesteps(1000).stop


def test_a_refiner_layout_model_trains_its_design_range_unless_told_otherwise() -> None:
    assert stage_split(SimpleNamespace(), refiner_layout=True) == StageSplit(0.2, REFINER)
    assert stage_split(SimpleNamespace(sdxl_refiner_uses_full_range=True), refiner_layout=True) is None
    assert stage_split(SimpleNamespace(), refiner_layout=False) is None


def test_held_out_evaluation_measures_inside_the_stage() -> None:
    family = SDXLFamily(SimpleNamespace(refiner_training=True, refiner_training_invert_schedule=True))
    objective = family.make_objective(DDPMScheduler(num_train_timesteps=1000), SimpleNamespace())
    noised = objective.noised_at(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1), torch.tensor([0.0, 0.5, 0.9999]))
    assert noised.timesteps.tolist() == [200, 600, 999]


BASE_FLAGS = ["--pretrained_model_name_or_path", "model", "--data_backend_config", "mdb.json",
              "--output_dir", "out"]


@pytest.mark.parametrize("flags, fragment", [
    (["--model_family", "flux", "--refiner_training"], "--refiner_training is for --model_family sdxl"),
    (["--model_family", "sdxl", "--refiner_training", "--sdxl_refiner_uses_full_range"],
     "--sdxl_refiner_uses_full_range trains every timestep but --refiner_training keeps to one stage"),
    (["--model_family", "sdxl", "--refiner_training", "--refiner_training_strength", "1"],
     "--refiner_training_strength"),
])
def test_bad_settings_are_refused(tmp_path: Path, flags: list, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(BASE_FLAGS + flags, env={}, cwd=tmp_path)


def test_good_settings_load_and_stage_options_are_ignored_without_refiner_training(tmp_path: Path) -> None:
    config = load_config(BASE_FLAGS + ["--model_family", "sdxl", "--refiner_training",
                                       "--refiner_training_strength", "0.35"], env={}, cwd=tmp_path)
    assert (config.refiner_training, config.refiner_training_strength) == (True, 0.35)
    config = load_config(BASE_FLAGS + ["--model_family", "sdxl", "--refiner_training_invert_schedule"],
                         env={}, cwd=tmp_path)
    assert config.ignored == ("--refiner_training_invert_schedule=true has no effect: only --refiner_training "
                              "uses it; ignoring it",)


def test_refiner_layout_options_on_a_base_layout_model_are_named_as_having_no_effect(tmp_path: Path,
                                                                                     tiny_sdxl: Path) -> None:
    from simpletuner.families.base import ModelSource

    config = load_config(BASE_FLAGS + ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
                                       "--data_aesthetic_score", "6.5", "--sdxl_refiner_uses_full_range"],
                         env={}, cwd=tmp_path)
    assert config.ignored == ()  # which layout the model has is known only once its folder is read
    family = SDXLFamily(config)
    assert family.ignored_for_model() == ()
    ModelSource.from_config(config, family).check(family)
    assert not family.refiner_layout
    assert family.ignored_for_model() == (
        "--data_aesthetic_score=6.5 has no effect: the model is in SDXL base's layout, whose micro-conditioning "
        "has the target size where the refiner's has an aesthetic score; ignoring it",
        "--sdxl_refiner_uses_full_range=true has no effect: the model is in SDXL base's layout, which trains "
        "every timestep already (--refiner_training picks a part); ignoring it",
    )
    # In the refiner's layout both act; at their defaults nothing is named.
    refiner = SDXLFamily(config)
    assert refiner.model_index_problem({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                        "requires_aesthetics_score": True,
                                        "unet": ["diffusers", "UNet2DConditionModel"]}, set()) is None
    assert refiner.refiner_layout and refiner.ignored_for_model() == ()
    plain = SDXLFamily(load_config(BASE_FLAGS + ["--model_family", "sdxl"], env={}, cwd=tmp_path))
    ModelSource(base=str(tiny_sdxl)).check(plain)
    assert plain.ignored_for_model() == ()
