"""Documentation and examples derived from (or checked against) the option tables.

* ``documentation/OPTIONS.md`` and ``documentation/DATALOADER_KEYS.md`` are
  generated; ``docgen --check`` must pass on the committed files and fail on
  a stale copy.
* ``train.py --help`` lists every option.
* Every example file under ``config/`` (and the top-level
  ``multidatabackend.json.example``) passes the real loaders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simpletuner.config import docgen
from simpletuner.config.loader import load_config
from simpletuner.config.model import option_values
from simpletuner.config.options import ENVIRONMENT, GROUPS, OPTIONS
from simpletuner.data.schema import DATASET_KEYS, load_data_backend_config
from simpletuner.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "documentation"
OPTIONS_MD = DOCS / "OPTIONS.md"
DATALOADER_MD = DOCS / "DATALOADER_KEYS.md"
EXAMPLES = REPO / "config"
CONFIG_ENV_VARS = ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=clean_env(**env),
        capture_output=True, text=True, timeout=60,
    )


def docgen_check(options_md: Path = OPTIONS_MD, dataloader_md: Path = DATALOADER_MD):
    return run(["-m", "simpletuner.config.docgen", "--check",
                "--output", str(options_md), "--dataloader-output", str(dataloader_md)])


# ------------------------------------------------------------------ docgen


def test_committed_docs_are_fresh():
    result = run(["-m", "simpletuner.config.docgen", "--check"])
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_modified_options_copy(tmp_path: Path):
    copy = tmp_path / "OPTIONS.md"
    text = OPTIONS_MD.read_text(encoding="utf-8").replace("Peak learning rate", "Top learning rate")
    copy.write_text(text, encoding="utf-8")
    result = docgen_check(options_md=copy)
    assert result.returncode == 1
    assert str(copy) in result.stderr and "stale" in result.stderr
    assert copy.read_text(encoding="utf-8") == text  # --check writes nothing


def test_check_fails_on_a_modified_dataloader_copy(tmp_path: Path):
    copy = tmp_path / "DATALOADER_KEYS.md"
    copy.write_text(DATALOADER_MD.read_text(encoding="utf-8") + "\nextra line\n", encoding="utf-8")
    result = docgen_check(dataloader_md=copy)
    assert result.returncode == 1
    assert str(copy) in result.stderr


def test_check_fails_on_a_stale_quantisation_matrix(tmp_path: Path):
    copy = tmp_path / "QUANTISATION.md"
    text = (REPO / "documentation" / "QUANTISATION.md").read_text(encoding="utf-8")
    assert "| `nf4-bnb` | bnb |" in text, "the matrix doc should list every precision"
    copy.write_text(text.replace("| `int8-torchao` | yes | no |", "| `int8-torchao` | yes | all algorithms |"),
                    encoding="utf-8")
    assert copy.read_text(encoding="utf-8") != text
    result = run(["-m", "simpletuner.config.docgen", "--check", "--quantisation-output", str(copy)])
    assert result.returncode == 1 and str(copy) in result.stderr
    copy.write_text(text, encoding="utf-8")
    assert run(["-m", "simpletuner.config.docgen", "--check", "--quantisation-output", str(copy)]).returncode == 0


def test_check_fails_on_a_missing_file(tmp_path: Path):
    assert docgen_check(options_md=tmp_path / "absent.md").returncode == 1


def test_unmodified_copies_pass_the_check(tmp_path: Path):
    shutil.copy(OPTIONS_MD, tmp_path / "o.md")
    shutil.copy(DATALOADER_MD, tmp_path / "d.md")
    assert docgen_check(tmp_path / "o.md", tmp_path / "d.md").returncode == 0


def test_generator_writes_what_check_expects(tmp_path: Path):
    options_md, dataloader_md = tmp_path / "a" / "OPTIONS.md", tmp_path / "b" / "KEYS.md"
    assert docgen.main(["--output", str(options_md), "--dataloader-output", str(dataloader_md)]) == 0
    assert options_md.read_text(encoding="utf-8") == docgen.render()
    assert dataloader_md.read_text(encoding="utf-8") == docgen.render_dataloader()
    assert docgen.main(["--check", "--output", str(options_md),
                        "--dataloader-output", str(dataloader_md)]) == 0


def test_options_md_documents_every_option_group_and_variable():
    text = docgen.render()
    for option in OPTIONS:
        assert f"### `--{option.name}`\n\n{option.help}" in text, option.name
    for group in GROUPS:
        assert f"## {group}\n" in text
    for name, _default, _help in ENVIRONMENT:
        assert f"| `{name}` |" in text
    assert "DATALOADER_KEYS.md" in text


def test_options_md_marks_status_and_secrets():
    sections = docgen.render().split("### ")
    by_name = {s.split("`")[1].lstrip("-"): s for s in sections[1:]}
    unbuilt = next(o.name for o in OPTIONS if o.implemented is False)
    assert "not implemented yet" in by_name[unbuilt]
    partial = next(o for o in OPTIONS if isinstance(o.implemented, tuple))
    assert "implemented for: " + ", ".join(f"`{c}`" for c in partial.implemented) in by_name[partial.name]
    assert "- **Status**: implemented\n" in by_name["learning_rate"]
    assert "**Secret**" in by_name["hub_token"]
    assert "**Range**: ≥ 1" in by_name["lora_rank"]


def test_dataloader_md_documents_every_dataset_key():
    text = docgen.render_dataloader()
    for key in DATASET_KEYS:
        assert f"### `{key.name}`\n\n{key.help}" in text, key.name
    section = text.split("### `resolution`")[1].split("### ")[0]
    assert "the global `--resolution` option" in section  # inherited default is explained


# ---------------------------------------------------------------- --help


def test_help_lists_every_option():
    result = run([str(REPO / "train.py"), "--help"])
    assert result.returncode == 0, result.stderr
    missing = [o.name for o in OPTIONS if not re.search(rf"--{o.name}\b", result.stdout)]
    assert not missing, f"--help does not list: {missing}"
    for group in GROUPS:
        assert f"{group}:" in result.stdout
    assert "[not implemented yet]" in result.stdout


# -------------------------------------------------------------- examples


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_example(cwd: Path, name: str, **env: str):
    return load_config([], env={"CONFIG_PATH": str(EXAMPLES / name), **env}, cwd=cwd)


def test_config_json_example_is_a_valid_sdxl_lora_config(cwd: Path):
    config = load_example(cwd, "config.json.example")
    assert config.model_type == "lora"
    assert config.model_family == "sdxl"
    assert config.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config.data_backend_config == "config/multidatabackend.json"
    assert config.output_dir
    assert config.resolution == 1024
    assert config.lora_rank == 16
    assert config.learning_rate == 1e-4
    assert config.train_batch_size == 1
    assert config.max_train_steps == 2000
    assert config.checkpointing_steps == 250
    assert config.checkpoints_total_limit == 5
    assert config.mixed_precision == "bf16"
    assert config.report_to == ["tensorboard"]
    assert config.seed == 42


def test_config_toml_example_matches_the_json_example(cwd: Path):
    from_json = option_values(load_example(cwd, "config.json.example"))
    from_toml = option_values(load_example(cwd, "config.toml.example", CONFIG_BACKEND="toml"))
    assert from_toml == from_json


def test_print_config_on_the_example(tmp_path: Path):
    result = run([str(REPO / "train.py"), "--print_config"],
                 CONFIG_PATH="config/config.json.example")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["learning_rate"] == 0.0001
    assert printed["model_family"] == "sdxl"
    assert printed["hub_token"] in (None, "***redacted***")


def test_config_env_example_sets_only_known_variables(tmp_path: Path):
    example = EXAMPLES / "config.env.example"
    text = example.read_text(encoding="utf-8")
    known = {name: default for name, default, _help in ENVIRONMENT}
    for name in known:
        assert name in text, f"{name} is not described in config.env.example"
    # Sourced the way train.sh sources it.
    result = subprocess.run(
        ["bash", "-c", 'set -a; source "$0"; set +a; env -0', str(example)],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")}, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    exported = dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)
    assigned = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", text, re.MULTILINE))
    assert {"TRAINING_NUM_PROCESSES", "TRAINING_DYNAMO_BACKEND", "SIMPLETUNER_LOG_LEVEL",
            "VENV_PATH", "ACCELERATE_EXTRA_ARGS"} <= assigned
    assert assigned <= set(known)
    for name in assigned:
        assert exported[name] == known[name], name


def test_the_two_multidatabackend_examples_are_identical():
    top = (REPO / "multidatabackend.json.example").read_text(encoding="utf-8")
    assert top == (EXAMPLES / "multidatabackend.json.example").read_text(encoding="utf-8")


@pytest.mark.parametrize("example", ["multidatabackend.json.example", "config/multidatabackend.json.example"])
def test_multidatabackend_example_loads(example: str, cwd: Path):
    shutil.copy(REPO / example, cwd / "multidatabackend.json")
    entries = json.loads((cwd / "multidatabackend.json").read_text(encoding="utf-8"))
    image = next(e for e in entries if e.get("dataset_type", "image") == "image")
    assert not Path(image["instance_data_dir"]).is_absolute()
    (cwd / image["instance_data_dir"]).mkdir(parents=True)
    defaults = option_values(load_example(cwd, "config.json.example"))
    backends = load_data_backend_config("multidatabackend.json", defaults)
    assert len(backends.image_datasets) == 1 and len(backends.text_embed_datasets) == 1
    dataset = backends.image_datasets[0]
    assert dataset.caption_strategy == "textfile"
    assert dataset.instance_data_dir == str(cwd / image["instance_data_dir"])
    assert backends.text_embeds_for(dataset).default


def test_multidatabackend_example_needs_its_image_folder(cwd: Path):
    shutil.copy(EXAMPLES / "multidatabackend.json.example", cwd / "multidatabackend.json")
    with pytest.raises(DataError, match="instance_data_dir"):
        load_data_backend_config("multidatabackend.json", {})


def test_lycoris_example_is_a_lokr_config():
    config = json.loads((EXAMPLES / "lycoris_config.json.example").read_text(encoding="utf-8"))
    assert config["algo"] == "lokr"
    assert config["multiplier"] == 1.0
    assert config["linear_dim"] == 10000
    assert config["linear_alpha"] == 1
    assert config["factor"] == 16
    preset = config["apply_preset"]
    assert preset["target_module"] == ["Attention", "FluxAttention", "FeedForward"]
    assert set(preset["module_algo_map"]) <= set(preset["target_module"])
    # Right for every family: each one's attention class is targeted.
    from simpletuner.families.registry import available_families, get_family

    for name in available_families():
        assert set(get_family(name).attention_class_names) <= set(preset["target_module"]), name


def test_caption_filter_example_has_literals_regexes_and_substitutions():
    lines = (EXAMPLES / "caption_filter_list.txt.example").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("#") for line in lines)
    filters = [line for line in lines if line.strip() and not line.startswith("#")]
    substitutions = [line for line in filters if line.startswith("s/")]
    patterns = [line for line in filters if not line.startswith("s/")]
    assert substitutions and patterns
    for line in substitutions:
        parts = line.split("/")
        assert len(parts) == 4 and parts[3] == "", f"not s/search/replace/: {line!r}"
        re.compile(parts[1])
    for line in patterns:
        re.compile(line)
    literal = [line for line in patterns if re.escape(line) == line.replace(" ", "\\ ")]
    regexes = [line for line in patterns if line not in literal]
    assert literal and regexes


def test_user_prompt_library_example_maps_names_to_prompts():
    library = json.loads((EXAMPLES / "user_prompt_library.json.example").read_text(encoding="utf-8"))
    assert isinstance(library, dict) and len(library) >= 3
    for name, prompt in library.items():
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        assert isinstance(prompt, str) and len(prompt.split()) >= 3
