"""Loading options: where the config file is found, how values are typed, who wins.

Every test calls the real loader, ``load_config(argv, env, cwd)``, with an
explicit environment so the developer's own CONFIG_PATH/ENV cannot leak in.
The working directory is a fresh tmp folder, so relative paths in rules
(output_dir, resume_from_checkpoint) resolve there too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from simpletuner.config.coerce import coerce_value
from simpletuner.config.loader import load_config
from simpletuner.config.options import OPTIONS, OPTIONS_BY_NAME
from simpletuner.errors import ConfigError

# The three options every training run must name.
REQUIRED = {
    "model_family": "sdxl",
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
    "data_backend_config": "config/multidatabackend.json",
}
REQUIRED_ARGV = [part for name, value in REQUIRED.items() for part in (f"--{name}", value)]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load(cwd: Path, argv=(), **env: str):
    return load_config(list(argv), env=dict(env), cwd=cwd)


# ---------------------------------------------------------------- JSON loader


def test_json_keys_with_and_without_dashes(cwd):
    write_json(
        cwd / "config" / "config.json",
        {**{f"--{k}": v for k, v in REQUIRED.items()}, "--lora_rank": 8, "learning_rate": 3e-4},
    )
    config = load(cwd)
    assert config.model_family == "sdxl"
    assert config.data_backend_config == "config/multidatabackend.json"
    assert config.lora_rank == 8
    assert config.learning_rate == pytest.approx(3e-4)
    assert config.config_file == str(cwd / "config" / "config.json")


def test_a_flag_without_its_value_is_one_line_not_the_usage(cwd, capsys):
    """`./train.sh --learning_rate` used to print argparse's whole usage (200 lines) and 'train.py: error: ...'."""
    from simpletuner.cli.train import main

    write_json(cwd / "config" / "config.json", REQUIRED)
    with pytest.raises(ConfigError) as raised:
        load(cwd, ["--lora_rank", "4", "--learning_rate"])
    assert str(raised.value) == ("command line: --learning_rate: expected one argument; give it one "
                                 "(--learning_rate VALUE)")
    assert main(["--lora_rank", "4", "--learning_rate"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == "error: " + str(raised.value)
    assert "usage:" not in captured.out + captured.err


def test_default_location_is_config_config_json(cwd):
    write_json(cwd / "config" / "config.json", {**REQUIRED, "lora_rank": 4})
    assert load(cwd).lora_rank == 4


def test_default_location_absent_means_command_line_alone(cwd):
    assert not (cwd / "config").exists()
    config = load(cwd, [*REQUIRED_ARGV, "--lora_rank", "12"])
    assert config.config_file is None
    assert config.lora_rank == 12
    assert config.model_family == "sdxl"


def test_default_location_absent_without_required_options_fails(cwd):
    with pytest.raises(ConfigError, match="--model_family is required"):
        load(cwd)


# ---------------------------------------------------------------- TOML loader


def test_toml_backend_reads_config_toml(cwd):
    path = cwd / "config" / "config.toml"
    path.parent.mkdir()
    path.write_text(
        'model_family = "sdxl"\n'
        'pretrained_model_name_or_path = "some/model"\n'
        'data_backend_config = "config/multidatabackend.json"\n'
        '"--lora_rank" = 24\n'
        'learning_rate = "2e-4"\n'
        'gradient_checkpointing = true\n'
        'report_to = ["tensorboard"]\n',
        encoding="utf-8",
    )
    config = load(cwd, CONFIG_BACKEND="toml")
    assert config.config_file == str(path)
    assert config.pretrained_model_name_or_path == "some/model"
    assert config.lora_rank == 24
    assert config.learning_rate == pytest.approx(2e-4)
    assert config.gradient_checkpointing is True
    assert config.report_to == ["tensorboard"]


def test_toml_backend_ignores_config_json(cwd):
    """CONFIG_BACKEND=toml looks for config.toml only; a config.json beside it is not read."""
    write_json(cwd / "config" / "config.json", {**REQUIRED, "lora_rank": 99})
    config = load(cwd, REQUIRED_ARGV, CONFIG_BACKEND="toml")
    assert config.config_file is None
    assert config.lora_rank == OPTIONS_BY_NAME["lora_rank"].default


def test_backend_name_is_case_insensitive(cwd):
    (cwd / "config").mkdir()
    (cwd / "config" / "config.toml").write_text("lora_rank = 5\n", encoding="utf-8")
    assert load(cwd, REQUIRED_ARGV, CONFIG_BACKEND="TOML").lora_rank == 5


# --------------------------------------------------------- ENV and CONFIG_PATH


def test_env_selects_config_subfolder(cwd):
    write_json(cwd / "config" / "config.json", {**REQUIRED, "lora_rank": 1})
    write_json(cwd / "config" / "portrait" / "config.json", {**REQUIRED, "lora_rank": 2})
    config = load(cwd, ENV="portrait")
    assert config.lora_rank == 2
    assert config.config_file == str(cwd / "config" / "portrait" / "config.json")


def test_env_default_means_config_json(cwd):
    write_json(cwd / "config" / "config.json", {**REQUIRED, "lora_rank": 3})
    assert load(cwd, ENV="default").lora_rank == 3


def test_env_with_toml_backend(cwd):
    path = cwd / "config" / "portrait" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("lora_rank = 7\n", encoding="utf-8")
    assert load(cwd, REQUIRED_ARGV, ENV="portrait", CONFIG_BACKEND="toml").lora_rank == 7


def test_config_path_with_extension(cwd):
    write_json(cwd / "elsewhere" / "run.json", {**REQUIRED, "lora_rank": 6})
    config = load(cwd, CONFIG_PATH="elsewhere/run.json")
    assert config.lora_rank == 6
    assert config.config_file == str(cwd / "elsewhere" / "run.json")


def test_config_path_without_extension_adds_json(cwd):
    write_json(cwd / "elsewhere" / "run.json", {**REQUIRED, "lora_rank": 9})
    assert load(cwd, CONFIG_PATH="elsewhere/run").lora_rank == 9


def test_config_path_without_extension_follows_backend(cwd):
    path = cwd / "elsewhere" / "run.toml"
    path.parent.mkdir()
    path.write_text("lora_rank = 10\n", encoding="utf-8")
    write_json(cwd / "elsewhere" / "run.json", {"lora_rank": 11})
    assert load(cwd, REQUIRED_ARGV, CONFIG_PATH="elsewhere/run", CONFIG_BACKEND="toml").lora_rank == 10


def test_config_path_absolute_and_beats_env(cwd, tmp_path_factory):
    other = write_json(tmp_path_factory.mktemp("other") / "abs.json", {**REQUIRED, "lora_rank": 13})
    write_json(cwd / "config" / "portrait" / "config.json", {**REQUIRED, "lora_rank": 2})
    assert load(cwd, CONFIG_PATH=str(other), ENV="portrait").lora_rank == 13


def test_config_path_to_an_example_file_is_used_as_named(cwd):
    """A file that exists under the exact name given (config.json.example) is read as is."""
    write_json(cwd / "run.json.example", {**REQUIRED, "lora_rank": 14})
    assert load(cwd, CONFIG_PATH="run.json.example").lora_rank == 14


def test_toml_example_file_is_parsed_as_toml(cwd):
    (cwd / "run.toml.example").write_text("lora_rank = 15\n", encoding="utf-8")
    assert load(cwd, REQUIRED_ARGV, CONFIG_PATH="run.toml.example").lora_rank == 15


# ------------------------------------------------------------------ coercion


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("gradient_checkpointing", "true", True),
        ("gradient_checkpointing", "false", False),
        ("gradient_checkpointing", "True", True),
        ("gradient_checkpointing", True, True),
        ("gradient_checkpointing", 0, False),
        ("learning_rate", "1e-4", 1e-4),
        ("learning_rate", "0.0003", 3e-4),
        ("learning_rate", 1, 1.0),
        ("lora_rank", "20", 20),
        ("lora_rank", "20.0", 20),
        ("lora_rank", 20.0, 20),
        ("max_train_steps", "1e3", 1000),
        ("resolution", "1024", 1024.0),
        ("lora_target_modules", ["to_q", "to_k"], ["to_q", "to_k"]),
        ("lora_target_modules", "to_q, to_k,to_v", ["to_q", "to_k", "to_v"]),
        ("report_to", "tensorboard", ["tensorboard"]),
        ("report_to", ["tensorboard", "wandb"], ["tensorboard", "wandb"]),
        ("crop_style", "centre", "center"),
        ("output_dir", "out", "out"),
    ],
)
def test_coerce_simpletuner_style_values(name, raw, expected):
    value = coerce_value(OPTIONS_BY_NAME[name], raw, "test")
    assert value == expected
    assert type(value) is type(expected)


def test_string_values_in_a_file_are_typed(cwd):
    write_json(
        cwd / "config" / "config.json",
        {
            **REQUIRED,
            "--learning_rate": "1e-4",
            "--lora_rank": "20",
            "--train_batch_size": "2.0",
            "--gradient_checkpointing": "true",
            "--crop": "false",
            "--lora_dropout": "0.1",
            "--report_to": "tensorboard",
            "--seed": "42",
        },
    )
    config = load(cwd)
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.lora_rank == 20 and isinstance(config.lora_rank, int)
    assert config.train_batch_size == 2 and isinstance(config.train_batch_size, int)
    assert config.gradient_checkpointing is True
    assert config.crop is False
    assert config.lora_dropout == pytest.approx(0.1)
    assert config.report_to == ["tensorboard"]
    assert config.seed == 42


def test_list_as_json_list_and_comma_string_agree(cwd):
    write_json(cwd / "a.json", {**REQUIRED, "report_to": ["tensorboard"]})
    write_json(cwd / "b.json", {**REQUIRED, "report_to": "tensorboard"})
    assert load(cwd, CONFIG_PATH="a.json").report_to == load(cwd, CONFIG_PATH="b.json").report_to


def test_command_line_values_are_typed_like_file_values(cwd):
    write_json(cwd / "run.json", {**REQUIRED, "learning_rate": "1e-4", "lora_rank": "20"})
    from_file = load(cwd, CONFIG_PATH="run.json")
    from_cli = load(cwd, [*REQUIRED_ARGV, "--learning_rate", "1e-4", "--lora_rank=20"])
    assert from_cli.config_file is None
    assert (from_cli.learning_rate, from_cli.lora_rank) == (from_file.learning_rate, from_file.lora_rank)
    assert isinstance(from_cli.lora_rank, int) and isinstance(from_cli.learning_rate, float)


def test_bare_bool_flag_means_true_and_can_be_turned_off(cwd):
    assert load(cwd, [*REQUIRED_ARGV, "--gradient_checkpointing"]).gradient_checkpointing is True
    assert load(cwd, [*REQUIRED_ARGV, "--gradient_checkpointing", "false"]).gradient_checkpointing is False
    assert load(cwd, [*REQUIRED_ARGV, "--gradient_checkpointing=no"]).gradient_checkpointing is False


# ---------------------------------------------------------------- precedence


def test_command_line_wins_over_file_which_wins_over_defaults(cwd):
    write_json(
        cwd / "config" / "config.json",
        {**REQUIRED, "learning_rate": "1e-4", "lora_rank": 8, "report_to": "tensorboard"},
    )
    config = load(cwd, ["--learning_rate", "2e-4", "--model_family", "sdxl"])
    assert config.learning_rate == pytest.approx(2e-4)  # CLI over file
    assert config.lora_rank == 8  # file over default
    assert config.report_to == ["tensorboard"]
    assert config.train_batch_size == OPTIONS_BY_NAME["train_batch_size"].default  # default


def test_command_line_can_reset_a_file_value_to_the_default(cwd):
    write_json(cwd / "config" / "config.json", {**REQUIRED, "gradient_checkpointing": True})
    assert load(cwd, ["--gradient_checkpointing", "false"]).gradient_checkpointing is False


def test_explicit_lists_what_file_and_command_line_set(cwd):
    write_json(
        cwd / "config" / "config.json",
        {**REQUIRED, "--lora_rank": 16, "learning_rate": 1e-4},  # both equal to their defaults
    )
    config = load(cwd, ["--seed", "3", "--learning_rate", "5e-5"])
    assert config.explicit == frozenset(REQUIRED) | {"lora_rank", "learning_rate", "seed"}
    assert "train_batch_size" not in config.explicit


def test_explicit_holds_only_what_was_typed(cwd):
    config = load(cwd, ["--print_config"])
    assert config.explicit == {"print_config"}


def test_every_option_is_a_config_attribute_with_its_default(cwd):
    config = load(cwd, REQUIRED_ARGV)
    for option in OPTIONS:
        if option.name not in REQUIRED:
            assert getattr(config, option.name) == option.default, option.name


def test_config_is_read_only(cwd):
    config = load(cwd, REQUIRED_ARGV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0


def test_information_only_flags_skip_the_required_options(cwd):
    config = load(cwd, ["--print_config"])
    assert config.print_config is True
    assert config.model_family is None


def test_config_path_without_extension_prefers_the_file_over_a_same_named_folder(cwd):
    (cwd / "config" / "portrait").mkdir(parents=True)
    write_json(cwd / "config" / "portrait.json", {**REQUIRED, "lora_rank": 17})
    assert load(cwd, CONFIG_PATH="config/portrait").lora_rank == 17
