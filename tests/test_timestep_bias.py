"""--timestep_bias_*: the sampling weights follow the documented rule, draws
follow the weights, and bad settings are refused with a clear message."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.training.objectives import DiffusionObjective
from simpletuner.training.timestep_bias import TimestepBias, sample_timesteps


def _weights(strategy: str, **values) -> torch.Tensor:
    return TimestepBias(strategy=strategy, **values).weights(1000)


def test_later_doubles_the_last_quarter() -> None:
    weights = _weights("later", multiplier=2.0, portion=0.25)
    base = 1 / (750 + 2 * 250)
    assert torch.allclose(weights[:750], torch.full((750,), base, dtype=torch.float64))
    assert torch.allclose(weights[750:], torch.full((250,), 2 * base, dtype=torch.float64))
    assert weights.sum().item() == pytest.approx(1.0)


def test_earlier_favours_the_first_timesteps() -> None:
    weights = _weights("earlier", multiplier=3.0, portion=0.1)
    base = 1 / (900 + 3 * 100)
    assert torch.allclose(weights[:100], torch.full((100,), 3 * base, dtype=torch.float64))
    assert torch.allclose(weights[100:], torch.full((900,), base, dtype=torch.float64))


def test_range_runs_from_begin_up_to_end() -> None:
    weights = _weights("range", multiplier=0.5, begin=200, end=500)
    base = 1 / (700 + 0.5 * 300)
    expected = torch.full((1000,), base, dtype=torch.float64)
    expected[200:500] = 0.5 * base
    assert torch.allclose(weights, expected)
    assert weights[199] > weights[200] and weights[499] < weights[500]


def test_none_is_uniform_and_a_tiny_portion_still_favours_one_timestep() -> None:
    assert torch.allclose(_weights("none"), torch.full((1000,), 1e-3, dtype=torch.float64))
    weights = _weights("later", multiplier=4.0, portion=0.0001)
    assert weights[-1] == 4 * weights[0] and torch.equal(weights[:-1], weights[:1].expand(999))


def test_a_zero_multiplier_leaves_the_span_out() -> None:
    weights = _weights("range", multiplier=0.0, begin=0, end=100)
    draws = sample_timesteps(1000, 20_000, torch.Generator().manual_seed(0), weights)
    assert draws.min().item() == 100


@pytest.mark.parametrize("strategy, values, favoured, share", [
    ("later", dict(multiplier=2.0, portion=0.25), slice(750, 1000), 500 / 1250),
    ("earlier", dict(multiplier=0.5, portion=0.5), slice(0, 500), 250 / 750),
    ("range", dict(multiplier=5.0, begin=100, end=200), slice(100, 200), 500 / 1400),
])
def test_many_draws_shift_toward_the_favoured_timesteps(strategy: str, values: dict, favoured: slice, share: float) -> None:
    draws = sample_timesteps(1000, 100_000, torch.Generator().manual_seed(0), _weights(strategy, **values))
    inside = ((draws >= favoured.start) & (draws < favoured.stop)).float().mean().item()
    uniform = (favoured.stop - favoured.start) / 1000
    assert inside == pytest.approx(share, abs=0.01)
    assert abs(inside - uniform) > 0.05


def _objective(**options) -> DiffusionObjective:
    scheduler = DDPMScheduler(beta_schedule="scaled_linear")
    return DiffusionObjective(scheduler, SimpleNamespace(**options))


def test_the_objective_draws_biased_timesteps_from_the_trainers_generator() -> None:
    objective = _objective(timestep_bias_strategy="later", timestep_bias_multiplier=3.0, timestep_bias_portion=0.2)
    latents = torch.zeros(512, 4, 2, 2)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    drawn = objective.noise(latents, generator).timesteps
    # a resumed run restores the generator and repeats the draw
    generator.set_state(state)
    assert torch.equal(objective.noise(latents, generator).timesteps, drawn)
    # the noise comes first, then the timesteps from the bias weights
    replay = torch.Generator().manual_seed(7)
    torch.randn(latents.shape, generator=replay)
    weights = _weights("later", multiplier=3.0, portion=0.2)
    assert torch.equal(drawn, torch.multinomial(weights, 512, replacement=True, generator=replay))
    assert (drawn >= 800).float().mean().item() == pytest.approx(600 / 1400, abs=0.06)


def test_without_a_bias_the_objective_draws_what_it_always_drew() -> None:
    latents = torch.zeros(8, 4, 2, 2)
    drawn = _objective().noise(latents, torch.Generator().manual_seed(7)).timesteps
    replay = torch.Generator().manual_seed(7)
    torch.randn(latents.shape, generator=replay)
    assert torch.equal(drawn, torch.randint(0, 1000, (8,), generator=replay))


def test_spans_the_schedule_cannot_hold_are_refused_when_the_objective_is_built() -> None:
    with pytest.raises(ConfigError, match="--timestep_bias_end=1200 is past this model's 1000"):
        _objective(timestep_bias_strategy="range", timestep_bias_multiplier=2.0, timestep_bias_end=1200)
    with pytest.raises(ConfigError, match="changes nothing"):
        _objective(timestep_bias_strategy="range", timestep_bias_multiplier=2.0)  # 0..1000 is everything
    with pytest.raises(ConfigError, match="leaves none to train on"):
        _objective(timestep_bias_strategy="range", timestep_bias_multiplier=0.0)


BASE = ["--model_family", "legacy", "--pretrained_model_name_or_path", "model", "--data_backend_config",
        "mdb.json", "--output_dir", "out"]


@pytest.mark.parametrize("flags, fragments", [
    (["--timestep_bias_strategy", "range", "--timestep_bias_multiplier", "2", "--timestep_bias_begin", "500",
      "--timestep_bias_end", "500"], ["--timestep_bias_begin=500 must be below --timestep_bias_end=500"]),
    (["--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "2", "--timestep_bias_portion", "0"],
     ["--timestep_bias_portion must be greater than 0"]),
    (["--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "2", "--timestep_bias_portion", "1.5"],
     ["--timestep_bias_portion"]),
    (["--timestep_bias_strategy", "later"], ["--timestep_bias_multiplier=1 changes nothing"]),
])
def test_bad_settings_are_refused(tmp_path: Path, flags: list, fragments: list) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(BASE + flags, env={}, cwd=tmp_path)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("flags, ignored", [
    (["--timestep_bias_multiplier", "2"],
     "--timestep_bias_multiplier=2.0 has no effect: --timestep_bias_strategy=none does not use it"),
    (["--timestep_bias_strategy", "earlier", "--timestep_bias_multiplier", "2", "--timestep_bias_begin", "10"],
     "--timestep_bias_begin=10 has no effect: only --timestep_bias_strategy range uses it, not earlier"),
    (["--timestep_bias_strategy", "range", "--timestep_bias_multiplier", "2", "--timestep_bias_end", "500",
      "--timestep_bias_portion", "0.5"],
     "--timestep_bias_portion=0.5 has no effect: only --timestep_bias_strategy earlier or later uses it, not range"),
])
def test_settings_the_strategy_does_not_use_are_ignored_with_a_warning(tmp_path: Path, flags: list,
                                                                       ignored: str) -> None:
    config = load_config(BASE + flags, env={}, cwd=tmp_path)
    assert config.ignored == (ignored + "; ignoring it",)


def test_good_settings_load(tmp_path: Path) -> None:
    config = load_config(BASE + ["--timestep_bias_strategy", "range", "--timestep_bias_multiplier", "2",
                                 "--timestep_bias_begin", "100", "--timestep_bias_end", "400"], env={}, cwd=tmp_path)
    assert (config.timestep_bias_strategy, config.timestep_bias_begin, config.timestep_bias_end) == ("range", 100, 400)


def test_flow_matching_families_ignore_timestep_bias(tmp_path: Path) -> None:
    # Their sigmas are continuous and drawn by --flow_weighting_scheme instead.
    flags = ["--model_family", "sd3", *BASE[2:], "--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "2"]
    config = load_config(flags, env={}, cwd=tmp_path)
    assert [line.split(" has no effect: ")[0] for line in config.ignored] == [
        "--timestep_bias_strategy=later", "--timestep_bias_multiplier=2.0"]
    assert all("only --model_family" in line for line in config.ignored)  # one message per option, the family's
    assert config.timestep_bias_strategy == "none"
