"""The configure wizard: scripted answers in, files that the real loaders accept out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest

from simpletuner.cli import configure
from simpletuner.config.loader import load_config
from simpletuner.config.model import option_values
from simpletuner.config.options import ENVIRONMENT, OPTIONS_BY_NAME
from simpletuner.data.schema import load_data_backend_config

REPO = Path(__file__).resolve().parents[1]
FILES = ("config.json", "multidatabackend.json", "config.env")


class Script:
    """An input() stand-in that replays answers and records the prompts."""

    def __init__(self, answers: Iterable[str]):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


# One answer per question, in the order asked.
DEFAULTS = [
    "",  # model family
    "",  # base model
    "",  # output dir
    "",  # dataset folder
    "",  # caption strategy
    "",  # resolution
    "",  # training type (model_type)
    "",  # lora rank
    "",  # learning rate
    "",  # max train steps (0: epochs)
    "",  # epochs
    "",  # batch size
    "",  # checkpointing steps
    "",  # mixed precision
    "",  # base model precision
    "",  # report_to
]

CUSTOM = [
    "sdxl",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "output/my-lora",
    "datasets/cats",
    "textfile",
    "768",
    "lora",
    "32",
    "2e-4",
    "1500",
    "2",
    "100",
    "no",
    "int8-quanto",
    "tensorboard",
]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_written(cwd: Path, config_dir: Path):
    config = load_config([], env={"CONFIG_PATH": str(config_dir / "config.json")}, cwd=cwd)
    backends = load_data_backend_config(config.data_backend_config, option_values(config))
    return config, backends


def test_custom_answers_write_files_that_load(cwd: Path, capsys):
    (cwd / "datasets" / "cats").mkdir(parents=True)
    script = Script(CUSTOM)
    assert configure.main([], input_fn=script) == 0
    config_dir = cwd / "config"
    assert sorted(p.name for p in config_dir.iterdir()) == sorted(FILES)
    config, backends = load_written(cwd, Path("config"))
    assert config.model_family == "sdxl"
    assert config.output_dir == "output/my-lora"
    assert config.lora_rank == 32
    assert config.learning_rate == pytest.approx(2e-4)
    assert config.max_train_steps == 1500
    assert config.train_batch_size == 2
    assert config.checkpointing_steps == 100
    assert config.mixed_precision == "no"
    assert config.base_model_precision == "int8-quanto"
    assert config.report_to == ["tensorboard"]
    assert config.data_backend_config == "config/multidatabackend.json"
    dataset = backends.image_datasets[0]
    assert dataset.instance_data_dir == str(cwd / "datasets" / "cats")
    assert dataset.caption_strategy == "textfile"
    assert dataset.resolution == 768
    assert dataset.cache_dir_vae.startswith(str(cwd / "output" / "cache"))
    assert backends.default_text_embeds.cache_dir.startswith(str(cwd / "output" / "cache"))
    assert "wrote" in capsys.readouterr().out


def test_config_json_holds_only_required_and_changed_values(cwd: Path):
    assert configure.main([], input_fn=Script(DEFAULTS)) == 0
    written = json.loads((cwd / "config" / "config.json").read_text(encoding="utf-8"))
    assert set(written) == {
        "--model_family", "--pretrained_model_name_or_path", "--data_backend_config",
    }
    config = load_config([], env={}, cwd=cwd)  # found at the default location
    assert config.model_family == "sdxl"
    assert config.pretrained_model_name_or_path == configure.SUGGESTED_MODELS["sdxl"]
    assert config.learning_rate == OPTIONS_BY_NAME["learning_rate"].default


def test_config_env_holds_launch_settings(cwd: Path):
    assert configure.main([], input_fn=Script(DEFAULTS)) == 0
    text = (cwd / "config" / "config.env").read_text(encoding="utf-8")
    assert "TRAINING_NUM_PROCESSES=1\n" in text
    defaults = {name: default for name, default, _help in ENVIRONMENT}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            assert defaults[name] == value


def test_prompts_come_from_the_option_table(cwd: Path):
    script = Script(DEFAULTS)
    configure.main([], input_fn=script)
    family_prompt = script.prompts[0]
    family = OPTIONS_BY_NAME["model_family"]
    offered = [c for c in family.choices if family.is_value_implemented(c)]
    assert offered and f"({', '.join(offered)})" in family_prompt
    for not_ready in set(family.choices) - set(offered):
        assert not_ready not in family_prompt
    rate_prompt = next(p for p in script.prompts if p.startswith("Learning rate"))
    assert f"[{OPTIONS_BY_NAME['learning_rate'].default}]" in rate_prompt
    precision_prompt = next(p for p in script.prompts if p.startswith("Mixed precision"))
    assert "(no, bf16, fp16)" in precision_prompt  # every implemented choice is offered


def test_fp16_is_asked_again_on_a_machine_without_a_gpu(cwd: Path, capsys):
    """The trainer refuses fp16 on a CPU, so the wizard does not accept it there."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where fp16 is accepted")
    script = Script(DEFAULTS[:13] + ["fp16", "bf16"] + DEFAULTS[14:])  # [13]: mixed precision
    assert configure.main([], input_fn=script) == 0
    assert sum(p.startswith("Mixed precision") for p in script.prompts) == 2
    assert "needs a GPU" in capsys.readouterr().out
    written = json.loads((cwd / "config" / "config.json").read_text(encoding="utf-8"))
    assert written.get("mixed_precision", "bf16") == "bf16"


def test_bad_answers_are_asked_again_with_the_choices(cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    from simpletuner.quantisation import matrix

    monkeypatch.setattr(matrix, "detect_hardware", lambda: matrix.Hardware(matrix.CPU))
    answers = list(CUSTOM)
    index = answers.index("int8-quanto")
    answers[index:index + 1] = ["nf4-bnb", "int8-quanto"]  # needs a GPU, fine on a CPU
    answers[0:1] = ["nonsense", "sdxl"]  # not a choice, fine (every family is implemented)
    index = answers.index("32")
    answers[index:index + 1] = ["-3", "lots", "32"]  # below minimum, not a number, fine
    index = answers.index("tensorboard")
    answers[index:index + 1] = ["none,tensorboard", "wandb", "tensorboard"]
    script = Script(answers)
    assert configure.main([], input_fn=script) == 0
    out = capsys.readouterr().out
    assert "'nonsense' is not offered; choose one of: sdxl, legacy, sd3, flux, pixart_sigma, kolors" in out
    assert "--lora_rank must be at least 1" in out
    assert "'none' cannot be combined" in out
    assert "  cannot run on a CPU without a GPU: bitsandbytes 4-bit" in out and "use int8-quanto" in out
    assert sum(p.startswith("Quantise the base model") for p in script.prompts) == 2
    assert sum(p.startswith("Model family") for p in script.prompts) == 2
    assert json.loads((cwd / "config" / "config.json").read_text())["--lora_rank"] == 32


def test_instance_prompt_is_asked_for_instanceprompt(cwd: Path):
    answers = list(DEFAULTS)
    answers[4] = "instanceprompt"
    answers.insert(5, "a photo of sks cat")
    assert configure.main([], input_fn=Script(answers)) == 0
    datasets = json.loads((cwd / "config" / "multidatabackend.json").read_text())
    assert datasets[0]["instance_prompt"] == "a photo of sks cat"
    (cwd / datasets[0]["instance_data_dir"]).mkdir(parents=True)
    _config, backends = load_written(cwd, Path("config"))
    assert backends.image_datasets[0].instance_prompt == "a photo of sks cat"


def test_output_dir_that_is_a_file_is_refused(cwd: Path, capsys):
    (cwd / "taken").write_text("x")
    answers = list(DEFAULTS)
    answers[2:3] = ["taken", "output/ok"]
    assert configure.main([], input_fn=Script(answers)) == 0
    assert "taken is a file" in capsys.readouterr().out
    assert load_config([], env={}, cwd=cwd).output_dir == "output/ok"


def test_other_config_dir_and_cache_under_cache(cwd: Path):
    answers = list(DEFAULTS)
    answers[2] = "runs"  # output dir without a parent: caches go to cache/
    assert configure.main(["--config_dir", "config/portrait"], input_fn=Script(answers)) == 0
    config = load_config([], env={"ENV": "portrait"}, cwd=cwd)
    assert config.data_backend_config == "config/portrait/multidatabackend.json"
    datasets = json.loads(Path(config.data_backend_config).read_text())
    assert datasets[0]["cache_dir_vae"].startswith("cache/")
    assert datasets[1]["cache_dir"].startswith("cache/")


def test_existing_files_are_kept_unless_confirmed(cwd: Path):
    (cwd / "config").mkdir()
    (cwd / "config" / "config.json").write_text("{}")
    assert configure.main([], input_fn=Script(["n"])) == 1
    assert (cwd / "config" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in (cwd / "config").iterdir()) == ["config.json"]
    assert configure.main([], input_fn=Script(["y", *DEFAULTS])) == 0
    assert "--model_family" in (cwd / "config" / "config.json").read_text()


def test_end_of_input_writes_nothing(cwd: Path):
    assert configure.main([], input_fn=Script(CUSTOM[:5])) == 1
    assert not (cwd / "config").exists()


def test_ctrl_c_writes_nothing(cwd: Path):
    def interrupt_at_the_fourth_question(prompt: str, asked=[]) -> str:
        asked.append(prompt)
        if len(asked) == 4:
            raise KeyboardInterrupt
        return ""

    assert configure.main([], input_fn=interrupt_at_the_fourth_question) == 130
    assert not (cwd / "config").exists()


def test_configure_py_over_stdin(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    result = subprocess.run(
        [sys.executable, str(REPO / "configure.py")],
        input="\n".join(CUSTOM) + "\n", cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "config").iterdir()) == sorted(FILES)
    printed = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--print_config"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["lora_rank"] == 32


def test_configure_py_stdin_closed_early(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(REPO / "configure.py")], input="sdxl\n", cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_fine_tune_is_not_asked_or_written_a_lora_rank(cwd: Path):
    answers = list(DEFAULTS)
    answers[6] = "full"  # training type
    del answers[7]  # no LoRA rank question follows
    script = Script(answers)
    assert configure.main([], input_fn=script) == 0
    assert not [p for p in script.prompts if p.startswith("LoRA rank")]
    written = json.loads((cwd / "config" / "config.json").read_text(encoding="utf-8"))
    assert written["--model_type"] == "full"
    assert "--lora_rank" not in written
    assert load_config([], env={}, cwd=cwd).ignored == ()


def test_options_without_effect_are_left_out_of_config_json():
    # The same rule train.py warns with: a rank means nothing to a full fine-tune.
    answers = {"model_family": "flux", "pretrained_model_name_or_path": "m", "model_type": "full",
               "lora_rank": 32, "max_train_steps": 10, "learning_rate": 2e-4}
    entries = configure._option_entries(answers, Path("config"))
    assert "--lora_rank" not in entries
    assert entries["--model_type"] == "full" and entries["--learning_rate"] == 0.0002
