"""Bad configs are refused before anything loads, with a message naming the culprit.

Each case below builds a small scenario in a tmp working directory (config
files, environment, command line) and names the fragments the error message
must contain: the offending option or file and what is wrong.  A sample of the
cases also runs ``python train.py`` as a real subprocess: exit code 2, no
traceback, and nothing written.

The second half checks redaction: secrets never reach printed configs, saved
configs, tracker parameters, error messages or logs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simpletuner.config.loader import load_config
from simpletuner.config.model import REDACTED, make_config, option_values, redacted_values
from simpletuner.config.options import OPTIONS, OPTIONS_BY_NAME
from simpletuner.errors import USER_ERROR_EXIT_CODE, ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"
CONFIG_ENV_VARS = ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")

DROP = object()  # marks a base key to leave out
BASE = {
    "model_family": "sdxl",
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
    "data_backend_config": "config/multidatabackend.json",
    "output_dir": "out",
}


def cfg(**changes: Any) -> dict:
    """A valid config with some keys changed (or dropped with DROP)."""
    data = {**BASE, **changes}
    return {key: value for key, value in data.items() if value is not DROP}


@dataclass
class Case:
    id: str
    expect: tuple  # fragments the message must contain
    files: dict = field(default_factory=dict)  # relative path -> dict | str | bytes | None (folder)
    argv: tuple = ()
    env: dict = field(default_factory=dict)
    lines: int = 1  # problems reported, one per line
    forbid: tuple = ()

    def build(self, cwd: Path) -> tuple[list[str], dict[str, str]]:
        for relative, content in self.files.items():
            path = cwd / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_text(json.dumps(content), encoding="utf-8")
        return list(self.argv), dict(self.env)


DEFAULT_FILE = "config/config.json"


def in_file(case_id: str, config: Any, *expect: str, **extra: Any) -> Case:
    return Case(case_id, expect, files={DEFAULT_FILE: config}, **extra)


CASES = [
    # --- unknown names
    in_file("unknown_key_in_file", cfg(learning_rat="1e-4"),
            "config/config.json", "unknown option --learning_rat", "did you mean --learning_rate?"),
    in_file("unknown_dashed_key_in_file", cfg(**{"--lora_rnk": 4}),
            "config.json", "--lora_rnk", "did you mean --lora_rank?"),
    in_file("unknown_key_on_cli", cfg(), "command line", "unknown option --learning_rat",
            "did you mean --learning_rate?", argv=("--learning_rat", "1e-4")),
    in_file("unknown_key_on_cli_with_equals", cfg(), "command line", "--lora_rnk",
            "did you mean --lora_rank?", argv=("--lora_rnk=4",)),
    in_file("unknown_key_without_suggestion", cfg(zzqqxx=1), "--zzqqxx", forbid=("did you mean",)),
    in_file("stray_positional_argument", cfg(), "command line", "'train'", argv=("train",)),
    # --- wrong types
    in_file("wrong_int", cfg(lora_rank="sixteen"),
            "config.json", "--lora_rank must be a whole number", "'sixteen'"),
    in_file("fractional_int", cfg(train_batch_size=2.5), "--train_batch_size must be a whole number", "2.5"),
    in_file("bool_given_for_int", cfg(lora_rank=True), "--lora_rank must be a whole number", "got True"),
    in_file("wrong_float", cfg(learning_rate="fast"), "--learning_rate must be a number", "'fast'"),
    in_file("wrong_bool", cfg(gradient_checkpointing="maybe"),
            "--gradient_checkpointing must be true or false", "'maybe'"),
    in_file("wrong_bool_on_cli", cfg(), "command line", "--crop must be true or false", "'perhaps'",
            argv=("--crop", "perhaps")),
    in_file("object_given_for_path", cfg(output_dir={"a": 1}), "--output_dir must be a path"),
    # --- choices and implementation status
    in_file("bad_choice", cfg(mixed_precision="fp64"),
            "--mixed_precision got 'fp64'", "choose one of: no, bf16, fp16"),
    in_file("bad_vae_dtype", cfg(vae_dtype="fp8"),
            "--vae_dtype got 'fp8'", "choose one of: default, fp16, bf16, fp32"),
    in_file("bad_base_model_default_dtype", cfg(), "command line", "--base_model_default_dtype got 'fp16'",
            "choose one of: bf16, fp32", argv=("--base_model_default_dtype", "fp16")),
    in_file("bad_choice_on_cli", cfg(), "command line", "--optimizer got 'adamw'",
            "adamw_bf16", "prodigy", argv=("--optimizer", "adamw")),
    in_file("bad_choice_in_list", cfg(report_to="tensorboard,mlflow"),
            "--report_to got 'mlflow'", "choose one of: tensorboard, wandb, comet_ml, none"),
    in_file("not_implemented_option", cfg(controlnet="true"),
            "--controlnet is not implemented yet", "set it to False"),
    in_file("unknown_family", cfg(model_family="sd4"),
            "--model_family got 'sd4'", "choose one of: sdxl, legacy, sd3, flux, pixart_sigma, kolors"),
    in_file("not_implemented_choice_of_several", cfg(lora_init_type="loftq"),
            "--lora_init_type=loftq is not implemented yet", "working choices: default, gaussian, olora, pissa",
            lines=2),  # the second line is loftq's own rule
    # --- bounds
    in_file("below_minimum", cfg(lora_rank=0), "--lora_rank must be at least 1", "got 0"),
    in_file("above_maximum", cfg(lora_dropout="1.5"), "--lora_dropout must be at most 1", "got 1.5"),
    in_file("negative_on_cli", cfg(), "command line", "--learning_rate must be at least 0",
            argv=("--learning_rate=-1e-4",)),
    # --- combinations
    in_file("no_training_length", cfg(max_train_steps="0", num_train_epochs=0),
            "--max_train_steps and --num_train_epochs are both 0"),
    in_file("lycoris_without_config", cfg(lora_type="lycoris"), "--lora_type=lycoris needs --lycoris_config"),
    in_file("validation_resolution_not_wxh", cfg(validation_resolution="1024x"),
            "--validation_resolution='1024x'", "WIDTHxHEIGHT"),
    in_file("validation_resolution_words", cfg(validation_resolution="1024x768,big"),
            "--validation_resolution='1024x768,big'", "'big' is not a size"),
    in_file("validation_resolution_not_multiple", cfg(validation_resolution="1024,1020"),
            "--validation_resolution='1024,1020'", "'1020'", "multiples of 8"),
    in_file("user_prompt_library_missing", cfg(user_prompt_library="prompts.json"),
            "--user_prompt_library=prompts.json: no such file"),
    Case("user_prompt_library_not_json", ("--user_prompt_library=prompts.json: not valid JSON",),
         files={DEFAULT_FILE: cfg(user_prompt_library="prompts.json"), "prompts.json": "{'a': 'b'"}),
    Case("user_prompt_library_not_prompts", ("--user_prompt_library=prompts.json", "non-empty prompt string"),
         files={DEFAULT_FILE: cfg(user_prompt_library="prompts.json"), "prompts.json": {"red": 3}}),
    in_file("clip_model_missing", cfg(evaluation_type="clip", pretrained_evaluation_model_name_or_path="./clip"),
            "--pretrained_evaluation_model_name_or_path=./clip: folder has no config.json"),
    Case("clip_model_not_clip", ("--pretrained_evaluation_model_name_or_path=clip", "holds a t5 model, not CLIP"),
         files={DEFAULT_FILE: cfg(evaluation_type="clip", pretrained_evaluation_model_name_or_path="clip"),
                "clip/config.json": {"model_type": "t5"}}),
    in_file("missing_model_family", cfg(model_family=DROP), "--model_family is required"),
    in_file("missing_pretrained_path", cfg(pretrained_model_name_or_path=DROP),
            "--pretrained_model_name_or_path is required"),
    in_file("missing_data_backend_config", cfg(data_backend_config=DROP),
            "--data_backend_config is required"),
    in_file("everything_missing", {}, "--model_family is required",
            "--pretrained_model_name_or_path is required", "--data_backend_config is required", lines=3),
    in_file("report_to_none_and_tensorboard", cfg(report_to=["none", "tensorboard"]),
            "--report_to", "'none' cannot be combined"),
    in_file("resume_path_missing", cfg(resume_from_checkpoint="out/checkpoint-99"),
            "--resume_from_checkpoint=out/checkpoint-99", "no such checkpoint folder"),
    in_file("lora_alpha_zero", cfg(lora_alpha=0), "--lora_alpha must be greater than 0"),
    Case("output_dir_is_a_file", ("--output_dir=out.txt is a file",),
         files={DEFAULT_FILE: cfg(output_dir="out.txt"), "out.txt": "not a folder"}),
    # --- broken files and locations
    in_file("corrupt_json", '{\n  "model_family": "sdxl",\n  "lora_rank": 4,,\n}\n',
            "config/config.json", "not valid JSON", "line 3, column 18"),
    in_file("truncated_json", '{"model_family": "sdxl",', "config.json", "not valid JSON", "line 1"),
    Case("corrupt_toml", ("config/config.toml", "not valid TOML", "line 2"),
         files={"config/config.toml": 'model_family = "sdxl"\nlora_rank = = 4\n'},
         env={"CONFIG_BACKEND": "toml"}),
    Case("toml_wrong_type", ("config.toml", "--lora_rank must be a whole number"),
         files={"config/config.toml": 'lora_rank = "many"\n'}, env={"CONFIG_BACKEND": "toml"}),
    Case("config_path_missing", ("nowhere/run.json", "config file not found"),
         env={"CONFIG_PATH": "nowhere/run.json"}),
    Case("config_path_missing_without_extension", ("nowhere/run.json", "config file not found"),
         env={"CONFIG_PATH": "nowhere/run"}),
    Case("env_folder_missing", ("config/portrait/config.json", "config file not found"),
         env={"ENV": "portrait"}),
    Case("directory_as_config_file", ("run.json is a directory", "expected a JSON config file"),
         files={"run.json": None}, env={"CONFIG_PATH": "run.json"}),
    in_file("top_level_json_list", '[{"lora_rank": 4}]', "config/config.json", "expected an object"),
    in_file("top_level_json_string", '"lora_rank=4"', "config.json", "expected an object"),
    in_file("file_not_utf8", b'{"model_family": "\xff\xfe"}', "config.json", "cannot read"),
    Case("unsupported_backend", ("CONFIG_BACKEND='yaml' is not supported", "json, toml"),
         env={"CONFIG_BACKEND": "yaml"}),
]

CASES_BY_ID = {case.id: case for case in CASES}


def test_case_ids_are_unique_and_plenty():
    assert len(CASES_BY_ID) == len(CASES)
    assert len(CASES) >= 20


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_config_is_refused_naming_the_problem(case: Case, cwd: Path):
    argv, env = case.build(cwd)
    with pytest.raises(UserError) as raised:
        load_config(argv, env=env, cwd=cwd)
    message = str(raised.value)
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    for fragment in case.forbid:
        assert fragment not in message
    assert len(message.splitlines()) == case.lines, message


def test_the_same_config_without_the_mistake_loads(cwd: Path):
    """Guards the cases above: their base config is valid, so each error is the case's own."""
    (cwd / "config").mkdir()
    (cwd / DEFAULT_FILE).write_text(json.dumps(cfg()), encoding="utf-8")
    config = load_config([], env={}, cwd=cwd)
    assert config.output_dir == "out"


def test_valid_validation_resolutions_pass_the_format_rule():
    from simpletuner.config.rules import validation_resolution_format

    for good in ("1024", "1216x832", "1024, 768x1024", " 512 x 512 "):
        assert validation_resolution_format({"validation_resolution": good}) is None
    assert validation_resolution_format({"validation_resolution": "1024x"}) is not None


def test_print_config_still_refuses_unimplemented_values(cwd: Path):
    with pytest.raises(ConfigError, match="--controlnet is not implemented yet"):
        load_config(["--print_config", "--controlnet"], env={}, cwd=cwd)


# ----------------------------------------------------------- real processes


def run_train(cwd: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *argv],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60,
    )


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


SUBPROCESS_SAMPLE = [
    "unknown_key_in_file",
    "unknown_key_on_cli",
    "wrong_float",
    "bad_choice",
    "bad_vae_dtype",
    "bad_base_model_default_dtype",
    "below_minimum",
    "no_training_length",
    "missing_model_family",
    "corrupt_json",
    "config_path_missing",
    "directory_as_config_file",
    "output_dir_is_a_file",
    "validation_resolution_not_multiple",
    "user_prompt_library_not_json",
    "clip_model_not_clip",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_SAMPLE)
def test_train_py_exits_2_without_traceback_and_writes_nothing(case_id: str, tmp_path: Path):
    case = CASES_BY_ID[case_id]
    argv, env = case.build(tmp_path)
    if not set(env) & set(CONFIG_ENV_VARS) and (tmp_path / DEFAULT_FILE).exists():
        env["CONFIG_PATH"] = DEFAULT_FILE
    before = tree(tmp_path)
    result = run_train(tmp_path, argv, env)
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in case.expect:
        assert fragment in result.stderr
    assert not (tmp_path / "out").exists()
    assert tree(tmp_path) == before


def test_train_py_runs_from_command_line_flags_alone(tmp_path: Path):
    result = run_train(tmp_path, ["--print_config", "--lora_rank", "8"], {})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["lora_rank"] == 8
    assert tree(tmp_path) == []


# ------------------------------------------------------------------ secrets

SECRET = "hf_sEcReT0123456789abcdef"


def config_with_secrets(secret: str = SECRET):
    """A TrainConfig whose every secret option holds ``secret`` (built past validation:
    a real run would check hub_token against the Hub)."""
    values = {option.name: option.default for option in OPTIONS}
    values.update(BASE)
    for option in OPTIONS:
        if option.secret:
            values[option.name] = secret
    return make_config(values, {"hub_token"}, None)


def test_hub_token_is_a_secret_option():
    assert OPTIONS_BY_NAME["hub_token"].secret


def test_redacted_values_mask_every_secret():
    config = config_with_secrets()
    assert option_values(config)["hub_token"] == SECRET  # the trainer can still use it
    redacted = redacted_values(config)
    assert redacted["hub_token"] == REDACTED
    assert SECRET not in json.dumps(redacted)
    assert redacted["learning_rate"] == config.learning_rate  # nothing else is masked


def test_unset_secret_is_shown_as_unset():
    values = {option.name: option.default for option in OPTIONS}
    assert redacted_values(make_config(values, set(), None))["hub_token"] is None


def test_saved_training_config_has_no_secret(tmp_path: Path):
    from simpletuner.training.setup import RUN_CONFIG_FILE, tracker_hparams, write_run_config

    config = config_with_secrets()
    write_run_config(config, tmp_path / "run")
    text = (tmp_path / "run" / RUN_CONFIG_FILE).read_text(encoding="utf-8")
    assert SECRET not in text
    saved = json.loads(text)
    assert saved["hub_token"] == REDACTED
    assert saved["model_family"] == "sdxl"
    assert SECRET not in json.dumps(tracker_hparams(config))


def test_print_config_output_has_no_secret(monkeypatch: pytest.MonkeyPatch, capsys):
    import simpletuner.config.loader as loader
    from simpletuner.cli import train

    config = config_with_secrets()
    config = type(config)(**{**option_values(config), "print_config": True},
                          config_file=None, explicit=frozenset())
    monkeypatch.setattr(loader, "load_config", lambda argv, **kwargs: config)
    assert train.main(["--print_config"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert json.loads(out)["hub_token"] == REDACTED


def test_secret_on_the_command_line_is_never_echoed(tmp_path: Path):
    result = run_train(tmp_path, ["--print_config", "--hub_token", SECRET], {})
    assert result.returncode == 0
    # Without --push_to_hub the token is set aside, and the warning saying so masks it.
    assert "--hub_token=***redacted*** has no effect" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"hub_token": {"token": SECRET}}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config([], env={"CONFIG_PATH": str(path)}, cwd=tmp_path)
    assert "--hub_token must be text" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_secret_filter_masks_messages_and_arguments():
    from simpletuner.logs import SecretFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter([SECRET, "", "ab"]))  # empty and tiny values are ignored
    logger = logging.getLogger("simpletuner.test_secret_filter")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("token=%s", SECRET)
        logger.info(f"pushing with {SECRET} to the hub")
        logger.info("about the abacus")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count(REDACTED) == 2
    assert "about the abacus" in output


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("simpletuner").level)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    yield
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("simpletuner").setLevel(saved[2])


def test_setup_logging_masks_secrets_on_the_console_and_in_the_debug_log(
    tmp_path: Path, restore_logging, capsys
):
    from simpletuner import logs

    log_file = tmp_path / "debug.log"
    logs.setup_logging({"SIMPLETUNER_LOG_LEVEL": "INFO"}, [SECRET])
    logs.attach_log_file(log_file)  # attached once the run starts
    logger = logging.getLogger("simpletuner.test")
    # A DEBUG record never reaches the console handler (INFO), so only the file
    # handler's own filter can mask it: the console's cannot rewrite it first.
    logger.debug("debug token %s", SECRET)
    logger.warning("loaded token %s", SECRET)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text(encoding="utf-8")
    assert "debug token" in text and "loaded token" in text
    assert SECRET not in text
    assert text.count(REDACTED) == 2
    console = capsys.readouterr().err
    assert "loaded token" in console and REDACTED in console
    assert "debug token" not in console
    assert SECRET not in console


@pytest.mark.parametrize(
    "family, flags, named",
    [
        ("sdxl", ["--flow_shift", "3"], "--flow_shift=3.0 has no effect: only --model_family sd3, flux use it, not sdxl"),
        ("flux", ["--prediction_type", "v_prediction"], "--prediction_type=v_prediction has no effect: only"),
        ("sd3", ["--snr_gamma", "5"], "--snr_gamma=5.0 has no effect: only --model_family"),
        ("sdxl", ["--pretrained_t5_model_name_or_path", "t5"], "--pretrained_t5_model_name_or_path=t5 has no effect"),
        ("sd3", ["--flux_guidance_value", "3.5"], "--flux_guidance_value=3.5 has no effect: only --model_family flux"),
    ],
)
def test_options_for_another_family_are_ignored_with_a_warning(tmp_path, family, flags, named) -> None:
    # SimpleTuner configs carry them across families; they load, are named, and change nothing.
    config = load_config(["--model_family", family, "--print_config", *flags], env={}, cwd=tmp_path)
    assert [line for line in config.ignored if named in line], config.ignored
    assert len(config.ignored) == 1
    name = flags[0][2:]
    assert getattr(config, name) == OPTIONS_BY_NAME[name].default


def test_family_restricted_options_pass_for_their_family(tmp_path) -> None:
    config = load_config(["--model_family", "flux", "--print_config", "--flow_shift", "3",
                          "--flux_guidance_value", "3.5"], env={}, cwd=tmp_path)
    assert config.flow_shift == 3.0


def test_flow_option_families_match_the_family_objectives() -> None:
    from simpletuner.config.options import FLOW_FAMILIES
    from simpletuner.families.registry import get_family
    from simpletuner.training.flow_matching import FlowMatchingObjective
    from simpletuner.training.objectives import DiffusionObjective

    class Scheduler:
        config = type("C", (), {"prediction_type": "epsilon", "num_train_timesteps": 1000})()

    for name in ("sdxl", "legacy", "kolors", "pixart_sigma", "sd3", "flux"):
        family = get_family(name)
        objective = family.make_objective(Scheduler(), load_config(["--model_family", name, "--print_config"], env={}))
        expected = FlowMatchingObjective if name in FLOW_FAMILIES else DiffusionObjective
        assert isinstance(objective, expected), name
