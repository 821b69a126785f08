"""Every SimpleTuner option name is understood (issue 16, the option-table half).

SimpleTuner v1.x's names and its current release's spellings
(shared/reference/simpletuner-v1-options.txt, vendored in tests/data) are each
an option of ours, another spelling of one, refused with a reason, or accepted
with a warning that they do nothing here; none is ever "unknown option".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simpletuner.cli.train import main as train_main
from simpletuner.config.docgen import render
from simpletuner.config.loader import load_config
from simpletuner.config.options import OPTIONS, OPTIONS_BY_NAME, SPELLING_TO_NAME
from simpletuner.config.options.compat import OPTIONS as COMPAT_OPTIONS
from simpletuner.config.sources import gather_values
from simpletuner.errors import ConfigError

REFERENCE = Path(__file__).resolve().parent / "data" / "simpletuner-v1-options.txt"
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "simpletuner-v1-options.txt"


def _reference_names() -> list[str]:
    """Every name of the reference: v1.x names, then the current release's spellings (left of ' = ')."""
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    return [line.split(" = ")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


def _sample(name: str) -> str:
    """A value the option takes: its default where it has one, else one of its kind."""
    option = OPTIONS_BY_NAME[SPELLING_TO_NAME.get(name, name)]
    if option.default is not None:
        value = option.default
        if isinstance(value, bool):
            return "true" if value else "false"
        return ",".join(value) if isinstance(value, list) else str(value)
    if option.choices:
        return str(option.choices[0])
    return {"int": "1", "float": "1", "bool": "true"}.get(option.kind, "x")


def test_the_vendored_reference_is_the_shared_one():
    if not SHARED_REFERENCE.is_file():
        pytest.skip(f"the shared reference is not beside this clone ({SHARED_REFERENCE}); the vendored copy is used")
    assert REFERENCE.read_text(encoding="utf-8") == SHARED_REFERENCE.read_text(encoding="utf-8")


def test_the_reference_lists_every_name():
    names = _reference_names()
    assert len(names) == 236 and "validation_guidance_rescale" in names and "flow_sigmoid_scale" in names


@pytest.mark.parametrize("source", ["command line", "config.json", "config.toml"])
def test_no_simpletuner_name_is_unknown(tmp_path: Path, source: str):
    names = _reference_names()
    if source == "command line":
        argv = [part for name in names for part in (f"--{name}", _sample(name))]
        values, _explicit, _path, problems, _spelled = gather_values(argv, {}, tmp_path)
    else:
        body = {name: _sample(name) for name in names}
        path = tmp_path / ("config.toml" if source == "config.toml" else "config.json")
        if path.suffix == ".toml":
            path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items()), encoding="utf-8")
        else:
            path.write_text(json.dumps(body), encoding="utf-8")
        values, _explicit, _path, problems, _spelled = gather_values([], {"CONFIG_PATH": str(path)}, tmp_path)
    assert problems == []
    # A spelling lands on our name with its value.
    assert values["checkpointing_steps"] == 500 and values["optimizer_beta1"] == 1.0


def test_a_name_nobody_has_is_still_unknown(tmp_path: Path):
    _values, _explicit, _path, problems, _spelled = gather_values(["--checkpoint_step_intervals", "5"], {}, tmp_path)
    assert problems == ["command line: unknown option --checkpoint_step_intervals; did you mean "
                        "--checkpoint_step_interval?"]


def _project(tmp_path: Path, body: dict) -> dict:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.json").write_text(json.dumps(body), encoding="utf-8")
    return {"CONFIG_PATH": str(tmp_path / "config" / "config.json")}


BASE = {"model_family": "sdxl", "pretrained_model_name_or_path": "model", "data_backend_config": "data.json"}


def test_simpletuner_defaults_of_names_we_do_not_act_on_pass_silently(tmp_path: Path):
    body = dict(BASE)
    body.update({option.name: option.default for option in COMPAT_OPTIONS if option.default is not None})
    config = load_config([], env=_project(tmp_path, body), cwd=tmp_path)
    assert config.ignored == ()
    assert config.validation_guidance_rescale == 0.0 and config.controlnet is False


def test_a_refused_name_says_why_and_exits_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    _project(tmp_path, {**BASE, "controlnet": True, "fuse_optimizer": True})
    assert train_main(["--print_config"]) == 2
    err = capsys.readouterr().err
    assert "--controlnet is not implemented yet (ControlNet training is outside this trainer's scope)" in err
    assert "--fuse_optimizer is not implemented yet; remove it or set it to False" in err
    assert "Traceback" not in err


def test_a_name_without_effect_here_is_one_warning_and_ignored(tmp_path: Path):
    config = load_config([], env=_project(tmp_path, {**BASE, "max_workers": 8, "keep_vae_loaded": True}), cwd=tmp_path)
    assert config.max_workers == 32 and config.keep_vae_loaded is False  # back at the default
    assert len(config.ignored) == 2
    assert any(line.startswith("--keep_vae_loaded=true has no effect: the VAE is freed") for line in config.ignored)


def test_print_config_shows_our_name_for_a_spelling(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENV", raising=False)
    env = _project(tmp_path, {**BASE, "model_family": "flux", "checkpoint_step_interval": 250,
                              "flux_schedule_auto_shift": True})
    monkeypatch.setenv("CONFIG_PATH", env["CONFIG_PATH"])
    assert train_main(["--print_config", "--fuse_qkv_projections", "false", "--adam_beta2", "0.99"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpointing_steps"] == 250
    assert printed["flow_resolution_shifting"] is True
    assert printed["optimizer_beta2"] == 0.99
    assert not {"checkpoint_step_interval", "flux_schedule_auto_shift", "adam_beta2"} & set(printed)


@pytest.mark.parametrize("spelling", ["flux_schedule_shift", "flow_schedule_shift"])
def test_simpletuner_shift_spellings_set_our_shift(tmp_path: Path, spelling: str):
    config = load_config([f"--{spelling}", "3", "--model_family", "flux"],
                         env=_project(tmp_path, BASE), cwd=tmp_path)
    assert config.flow_shift == 3.0


def test_two_spellings_that_disagree_exit_2_naming_both(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENV", raising=False)
    env = _project(tmp_path, {**BASE, "checkpoint_step_interval": 250, "checkpointing_steps": 100})
    monkeypatch.setenv("CONFIG_PATH", env["CONFIG_PATH"])
    assert train_main(["--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"error: {env['CONFIG_PATH']}: --checkpoint_step_interval and --checkpointing_steps are the "
                      "same option (--checkpointing_steps) but set to different values (250 and 100); keep one of "
                      "them")
    # The same value written twice is no disagreement; on the command line either.
    load_config([], env=_project(tmp_path, {**BASE, "validation_step_interval": 100, "validation_steps": 100}),
                cwd=tmp_path)
    with pytest.raises(ConfigError, match="--flux_schedule_shift and --flow_schedule_shift are the same option"):
        load_config(["--flux_schedule_shift", "2", "--flow_schedule_shift", "3"], env=_project(tmp_path, BASE),
                    cwd=tmp_path)


def test_a_key_written_with_and_without_dashes_that_disagree_is_named(tmp_path: Path):
    """SimpleTuner allows "--lora_rank" and "lora_rank"; both in one file used to let the later one win silently."""
    env = _project(tmp_path, {**BASE, "--lora_rank": 4, "lora_rank": 8})
    with pytest.raises(ConfigError) as raised:
        load_config([], env=env, cwd=tmp_path)
    assert str(raised.value) == (f"{env['CONFIG_PATH']}: keys '--lora_rank' and 'lora_rank' are the same option but "
                                 "set to different values (4 and 8); keep one of them")
    load_config([], env=_project(tmp_path, {**BASE, "--lora_rank": 8, "lora_rank": 8}), cwd=tmp_path)  # agree


def test_the_command_line_overrides_a_spelling_in_the_file(tmp_path: Path):
    env = _project(tmp_path, {**BASE, "checkpoint_step_interval": 250})
    assert load_config(["--checkpointing_steps", "40"], env=env, cwd=tmp_path).checkpointing_steps == 40


@pytest.mark.parametrize("spelled, family", [("sd1x", "legacy"), ("sd2x", "legacy"), ("pixart", "pixart_sigma"),
                                             ("sdxl", "sdxl")])
def test_family_names_of_the_current_release(tmp_path: Path, spelled: str, family: str):
    config = load_config(["--model_family", spelled], env=_project(tmp_path, BASE), cwd=tmp_path)
    assert config.model_family == family


def test_an_option_for_another_family_is_a_warning_in_the_users_words(tmp_path: Path):
    config = load_config([], env=_project(tmp_path, {**BASE, "model_family": "pixart", "flow_schedule_shift": 3}),
                         cwd=tmp_path)
    assert config.flow_shift == 1.0
    assert config.ignored == ("--flow_schedule_shift=3.0 (--flow_shift here) has no effect: only --model_family "
                              "sd3, flux use it, not pixart_sigma; ignoring it",)


def test_a_bad_value_names_the_spelling_written(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"command line: --flow_schedule_shift must be a number, got 'high'"):
        load_config(["--flow_schedule_shift", "high"], env=_project(tmp_path, BASE), cwd=tmp_path)


def test_offset_noise_turns_the_offset_on_with_simpletuners_strength(tmp_path: Path):
    env = _project(tmp_path, BASE)
    assert load_config([], env=env, cwd=tmp_path).noise_offset == 0.0
    assert load_config(["--offset_noise"], env=env, cwd=tmp_path).noise_offset == 0.1
    assert load_config(["--offset_noise", "--noise_offset", "0.05"], env=env, cwd=tmp_path).noise_offset == 0.05


def test_options_md_shows_spellings_and_why_names_are_refused():
    text = render()
    section = text.split("### `--checkpointing_steps`")[1].split("### ")[0]
    assert "- **Also spelled**: `--checkpoint_step_interval`" in section
    controlnet = text.split("### `--controlnet`")[1].split("### ")[0]
    assert "ControlNet training is outside this trainer's scope" in controlnet
    workers = text.split("### `--max_workers`")[1].split("### ")[0]
    assert "no effect here" in workers.lower()


def test_spellings_are_not_option_names_and_point_at_options():
    names = {option.name for option in OPTIONS}
    assert not set(SPELLING_TO_NAME) & names
    assert set(SPELLING_TO_NAME.values()) <= names


def test_no_compat_entry_is_shadowed_by_a_real_option():
    """Once a group module implements a SimpleTuner name, its compat placeholder must go (dead text)."""
    from simpletuner.config.options import adapters, compat, data, model, objective, optimisation, outputs, run

    real = {o.name for m in (model, adapters, optimisation, objective, data, outputs, run) for o in m.OPTIONS}
    shadowed = sorted(o.name for o in compat.OPTIONS if o.name in real)
    assert not shadowed, f"remove these from config/options/compat.py: {shadowed}"
