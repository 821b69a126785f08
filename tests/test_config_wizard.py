"""The configure wizard with typed (piped) answers: files that the real loaders accept out.

The arrow-key menus of a real terminal are driven in test_config_wizard_pty.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest

from simpletuner.cli import configure
from simpletuner.config.loader import load_config
from simpletuner.config.model import option_values
from simpletuner.config.environment import launch_settings
from simpletuner.config.options import ENVIRONMENT, OPTIONS_BY_NAME
from simpletuner.data.schema import load_data_backend_config
from simpletuner.tools.demo_data import make_demo_dataset

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

    def asked(self, start: str) -> list[str]:
        return [p for p in self.prompts if p.startswith(start)]


# One answer per question, in the order asked (a Hub model: no files here, so no estimate).
ORDER = ["family", "flavour", "base", "model_type", "lora_type", "rank", "output", "memory", "mixed",
         "quantise", "checkpointing", "batch", "resolution", "optimizer", "ema", "dataset", "more", "caption",
         "lr", "length", "ckpt_steps", "keep", "seed", "validation", "report_to", "hub", "gpus", "machines"]


def answers(**changed: str) -> list[str]:
    """The default answers (Enter), with the family and dataset folder given and ``changed`` replaced."""
    chosen = {"family": "sdxl", "dataset": "images", **changed}
    return [chosen.get(name, "") for name in ORDER]


def replace(script: list[str], name: str, *typed: str) -> list[str]:
    """``script`` with the answer to question ``name`` replaced by several typed attempts."""
    index = ORDER.index(name)
    return script[:index] + list(typed) + script[index + 1:]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    make_demo_dataset(tmp_path / "images", count=4, sizes=((64, 64),))
    return tmp_path


def written(cwd: Path, name: str = "config.json", folder: str = "config"):
    return json.loads((cwd / folder / name).read_text(encoding="utf-8"))


def load_written(cwd: Path, config_dir: Path):
    config = load_config([], env={"CONFIG_PATH": str(config_dir / "config.json")}, cwd=cwd)
    backends = load_data_backend_config(config.data_backend_config, option_values(config))
    return config, backends


def test_custom_answers_write_files_that_load(cwd: Path, capsys):
    make_demo_dataset(cwd / "more", count=2, sizes=((64, 64),))
    script = Script(answers(
        family="sdxl", flavour="base-0.9", base="stabilityai/stable-diffusion-xl-base-1.0",
        output="output/my-lora", rank="32", mixed="no", quantise="int8-quanto", checkpointing="true",
        batch="2", resolution="768", optimizer="optimi-lion", ema="true", more="more", caption="textfile", lr="2e-4",
        length="1500", ckpt_steps="100", keep="2", seed="7", validation="a cat", report_to="tensorboard",
        gpus="2",
    ))
    script.answers.insert(ORDER.index("more") + 1, "")  # no third folder
    # Validation every 250 steps, a second prompt, then no more.
    script.answers[ORDER.index("validation") + 2:ORDER.index("validation") + 2] = ["250", "a dog on a sofa", ""]
    assert configure.main([], input_fn=script) == 0, capsys.readouterr()
    assert sorted(p.name for p in (cwd / "config").iterdir()) == sorted(FILES + ("user_prompt_library.json",))
    config, backends = load_written(cwd, Path("config"))
    assert config.model_family == "sdxl" and config.model_flavour is None  # the flavour names another model
    assert config.output_dir == "output/my-lora"
    assert config.lora_rank == 32
    assert config.learning_rate == pytest.approx(2e-4)
    assert config.max_train_steps == 1500
    assert config.train_batch_size == 2 and config.gradient_checkpointing
    assert config.optimizer == "optimi-lion" and config.use_ema
    assert config.checkpointing_steps == 100 and config.checkpoints_total_limit == 2 and config.seed == 7
    assert config.mixed_precision == "no"
    assert config.base_model_precision == "int8-quanto"
    assert config.validation_prompt == "a cat" and config.validation_steps == 250
    assert config.user_prompt_library == "config/user_prompt_library.json"
    assert written(cwd, "user_prompt_library.json") == {"a_dog_on_a": "a dog on a sofa"}
    assert config.report_to == ["tensorboard"]
    assert config.data_backend_config == "config/multidatabackend.json"
    assert [d.instance_data_dir for d in backends.image_datasets] == [str(cwd / "images"), str(cwd / "more")]
    assert {d.caption_strategy for d in backends.image_datasets} == {"textfile"}
    assert backends.image_datasets[0].resolution == 768
    assert backends.image_datasets[0].cache_dir_vae.startswith(str(cwd / "output" / "cache"))
    assert "TRAINING_NUM_PROCESSES=2\n" in (cwd / "config" / "config.env").read_text()


def test_config_json_holds_required_changed_seed_and_checkpoint_limit(cwd: Path):
    assert configure.main([], input_fn=Script(answers())) == 0
    assert set(written(cwd)) == {
        "--model_family", "--pretrained_model_name_or_path", "--model_flavour", "--data_backend_config",
        "--max_train_steps", "--num_train_epochs", "--seed", "--checkpoints_total_limit", "--caption_strategy",
    }
    config = load_config([], env={}, cwd=cwd)  # found at the default location
    assert config.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config.model_flavour == "base-1.0"
    assert config.seed == configure.DEFAULT_SEED
    assert config.checkpoints_total_limit == configure.DEFAULT_CHECKPOINTS_KEPT
    assert config.learning_rate == OPTIONS_BY_NAME["learning_rate"].default


def test_config_env_holds_launch_settings(cwd: Path):
    assert configure.main([], input_fn=Script(answers())) == 0
    text = (cwd / "config" / "config.env").read_text(encoding="utf-8")
    assert "TRAINING_NUM_PROCESSES=1\n" in text
    defaults = {name: default for name, default, _help in ENVIRONMENT}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            assert defaults[name] == value


def test_several_machines_write_the_multi_node_launch_settings(cwd: Path, capsys):
    """Two machines of 4 GPUs: the total process count, this machine's rank and the main address,
    checked by the same launch_settings train.sh uses; a rank out of range and an empty address are re-asked."""
    script = Script(answers(gpus="4", machines="2"))
    script.answers += ["3", "2", "", "10.0.0.1", "29600"]  # rank 3 of 2 refused, then 2; no address, then one
    assert configure.main([], input_fn=script) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "give a number from 1 to 2" in out and "need it to find the main one" in out
    text = (cwd / "config" / "config.env").read_text(encoding="utf-8")
    env = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    settings = launch_settings({k: v for k, v in env.items() if v != ""})
    assert settings.num_processes == 8 and settings.num_machines == 2 and settings.machine_rank == 1
    assert settings.main_process_ip == "10.0.0.1" and settings.main_process_port == 29600


def test_prompts_come_from_the_option_table(cwd: Path):
    script = Script(answers())
    configure.main([], input_fn=script)
    family = OPTIONS_BY_NAME["model_family"]
    offered = [c for c in family.choices if family.is_value_implemented(c)]
    # No default to keep: the prompt shows none, as the help says.
    assert script.prompts[0] == f"Model family ({', '.join(offered)}): "
    rate_prompt = script.asked("Learning rate")[0]
    assert f"[{OPTIONS_BY_NAME['learning_rate'].default}]" in rate_prompt


def test_family_needs_an_answer_and_any_case_is_accepted(cwd: Path, capsys):
    script = Script(replace(answers(), "family", "", "SDXL"))
    assert configure.main([], input_fn=script) == 0
    assert "an answer is required" in capsys.readouterr().out
    assert written(cwd)["--model_family"] == "sdxl"


def test_capitalised_flux_is_accepted(cwd: Path):
    script = Script(answers(family="Flux"))
    assert configure.main([], input_fn=script) == 0
    assert written(cwd)["--model_family"] == "flux"
    assert written(cwd)["--model_flavour"] == "dev"


def test_fp16_is_not_offered_on_a_machine_without_a_gpu(cwd: Path, capsys):
    """The trainer refuses fp16 on a CPU, so the wizard neither offers nor accepts it there."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where fp16 is accepted")
    script = Script(replace(answers(), "mixed", "fp16", "no"))
    assert configure.main([], input_fn=script) == 0
    [first, second] = script.asked("Mixed precision")
    assert first.startswith("Mixed precision (no, bf16) [bf16]")
    assert "'fp16' is not offered; choose one of: no, bf16" in capsys.readouterr().out
    assert written(cwd)["--mixed_precision"] == "no"


def test_a_base_model_path_that_does_not_exist_is_asked_again(cwd: Path, capsys):
    (cwd / "not-a-model").mkdir()
    script = Script(replace(answers(), "base", "./missing", "not-a-model", "missing-no-slash", ""))
    assert configure.main([], input_fn=script) == 0
    out = capsys.readouterr().out
    assert "--pretrained_model_name_or_path=./missing: no such folder" in out
    assert "not-a-model: folder has no model_index.json" in out
    assert "missing-no-slash is neither a folder here nor a Hub id" in out
    assert len(script.asked("Base model")) == 4


def test_training_length_is_one_question_for_steps_or_epochs(cwd: Path, capsys):
    script = Script(replace(answers(), "length", "forever", "10 epochs"))
    assert configure.main([], input_fn=script) == 0
    assert "give steps (1000 or 1000 steps) or epochs (10 epochs)" in capsys.readouterr().out
    config = load_config([], env={}, cwd=cwd)
    assert (config.max_train_steps, config.num_train_epochs) == (0, 10)
    # The questions after it are the same whichever was given: piped answers do not shift.
    steps = Script(answers(length="300"))
    epochs = Script(answers(length="3 epochs"))
    for script in (steps, epochs):
        shutil.rmtree(cwd / "config")
        assert configure.main([], input_fn=script) == 0
    assert [p.split(" [")[0] for p in steps.prompts] == [p.split(" [")[0] for p in epochs.prompts]


def test_caption_strategy_proposed_from_the_scanned_folder(cwd: Path, capsys):
    script = Script(answers())
    assert configure.main([], input_fn=script) == 0
    assert script.asked("Caption strategy")[0].endswith("[textfile]: ")  # every image has its .txt
    assert "captions: 4 of 4 images have a .txt caption" in capsys.readouterr().out
    (cwd / "images" / "circle_000.txt").unlink()
    shutil.rmtree(cwd / "config")
    script = Script(answers())
    assert configure.main([], input_fn=script) == 0
    assert script.asked("Caption strategy")[0].endswith("[filename]: ")
    assert "captions: 3 of 4 images have a .txt caption (1 without)" in capsys.readouterr().out


def test_an_empty_or_missing_dataset_folder_is_reported_not_written(cwd: Path, capsys):
    (cwd / "empty").mkdir()
    script = Script(replace(answers(), "dataset", "nowhere", "empty", "images"))
    assert configure.main([], input_fn=script) == 0
    out = capsys.readouterr().out
    assert "nowhere does not exist" in out and "nowhere is not added" in out
    assert "no usable images in empty" in out and "empty is not added" in out
    assert "4 image files found, 4 usable, 0 skipped" in out
    assert "64x64" in out or "1024x1024" in out  # the bucket table
    assert "steps per epoch at this batch size" in out
    entries = written(cwd, "multidatabackend.json")
    assert [e["instance_data_dir"] for e in entries if e["dataset_type"] == "image"] == ["images"]


def test_bad_answers_are_asked_again_with_the_choices(cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    from simpletuner.quantisation import matrix

    monkeypatch.setattr(matrix, "detect_hardware", lambda: matrix.Hardware(matrix.CPU))
    script = answers(quantise="int8-quanto", rank="32", report_to="tensorboard")
    # Latest question first: each replacement shifts the answers after it.
    script = replace(script, "report_to", "none,tensorboard", "wandb", "tensorboard")
    script = replace(script, "quantise", "nf4-bnb", "int8-quanto")
    script = replace(script, "rank", "-3", "lots", "32")
    script = replace(script, "family", "nonsense", "sdxl")
    typed = Script(script)
    assert configure.main([], input_fn=typed) == 0
    out = capsys.readouterr().out
    assert "'nonsense' is not offered; choose one of: sdxl, legacy, sd3, flux, pixart_sigma, kolors" in out
    assert "--lora_rank must be at least 1" in out
    assert "'none' cannot be combined" in out
    # nf4-bnb needs a GPU: not offered on this (CPU) machine.
    assert "'nf4-bnb' is not offered" in out and "nf4-bnb" not in typed.asked("Quantise the base model")[0]
    assert len(typed.asked("Quantise the base model")) == 2
    assert len(typed.asked("Model family")) == 2
    assert written(cwd)["--lora_rank"] == 32


def test_lycoris_writes_its_config_file(cwd: Path):
    script = Script(answers(lora_type="lycoris"))
    index = ORDER.index("rank")
    script.answers[index:index + 1] = ["loha", "attention"]  # algorithm and preset instead of a rank
    assert configure.main([], input_fn=script) == 0
    spec = written(cwd, "lycoris_config.json")
    assert spec["algo"] == "loha" and spec["apply_preset"] == {"target_module": ["Attention", "FluxAttention"]}
    config = load_config([], env={}, cwd=cwd)
    assert config.lora_type == "lycoris" and config.lycoris_config == "config/lycoris_config.json"


def test_publishing_asks_the_repository_and_never_writes_a_token(cwd: Path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    script = Script(replace(answers(), "hub", "yes", "not a name", "me/cats"))
    assert configure.main([], input_fn=script) == 0
    assert "no token is written into any file" in capsys.readouterr().out
    config = load_config([], env={}, cwd=cwd)
    assert config.push_to_hub and config.hub_model_id == "me/cats"
    for file in (cwd / "config").iterdir():
        assert "hf_secret_token_value" not in file.read_text()


def test_instance_prompt_is_asked_for_instanceprompt(cwd: Path):
    script = answers(caption="instanceprompt")
    script.insert(ORDER.index("caption") + 1, "a photo of sks cat")
    assert configure.main([], input_fn=Script(script)) == 0
    _config, backends = load_written(cwd, Path("config"))
    assert backends.image_datasets[0].instance_prompt == "a photo of sks cat"


def test_output_dir_that_is_a_file_is_refused(cwd: Path, capsys):
    (cwd / "taken").write_text("x")
    assert configure.main([], input_fn=Script(replace(answers(), "output", "taken", "output/ok"))) == 0
    assert "taken is a file" in capsys.readouterr().out
    assert load_config([], env={}, cwd=cwd).output_dir == "output/ok"


def test_other_config_dir_and_cache_under_cache(cwd: Path, capsys):
    assert configure.main(["--config_dir", "config/portrait"], input_fn=Script(answers(output="runs"))) == 0
    assert "then train:     ENV=portrait ./train.sh" in capsys.readouterr().out
    config = load_config([], env={"ENV": "portrait"}, cwd=cwd)
    assert config.data_backend_config == "config/portrait/multidatabackend.json"
    datasets = json.loads(Path(config.data_backend_config).read_text())
    assert datasets[0]["cache_dir_vae"].startswith("cache/")
    assert datasets[1]["cache_dir"].startswith("cache/")


def test_a_config_dir_elsewhere_is_launched_with_its_config_env(cwd: Path, capsys):
    """train.sh reads the config.env beside CONFIG_PATH, as the summary tells the user to launch."""
    from train_sh import train_sh, user_env

    assert configure.main(["--config_dir", "elsewhere"], input_fn=Script(answers())) == 0
    assert "then train:     CONFIG_PATH=elsewhere/config.json ./train.sh" in capsys.readouterr().out
    env_file = cwd / "elsewhere" / "config.env"
    env_file.write_text(env_file.read_text() + "TRAINING_DYNAMO_BACKEND=bogus\n")
    result = train_sh(cwd, "--print_config", env=user_env(CONFIG_PATH="elsewhere/config.json"))
    assert result.returncode == 2
    assert "TRAINING_DYNAMO_BACKEND=bogus" in result.stderr and "(set in elsewhere/config.env)" in result.stderr


def test_existing_files_are_kept_unless_confirmed(cwd: Path):
    (cwd / "config").mkdir()
    (cwd / "config" / "config.json").write_text("{}")
    assert configure.main([], input_fn=Script(["n"])) == 1
    assert (cwd / "config" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in (cwd / "config").iterdir()) == ["config.json"]
    assert configure.main([], input_fn=Script(["y", *answers()])) == 0
    assert "--model_family" in (cwd / "config" / "config.json").read_text()


def test_end_of_input_writes_nothing(cwd: Path):
    assert configure.main([], input_fn=Script(answers()[:5])) == 1
    assert not (cwd / "config").exists()


def test_ctrl_c_writes_nothing(cwd: Path):
    script = answers()

    def interrupt_at_the_caption_question(prompt: str) -> str:
        if prompt.startswith("Caption strategy"):
            raise KeyboardInterrupt
        return script.pop(0)

    assert configure.main([], input_fn=interrupt_at_the_caption_question) == 130
    assert not (cwd / "config").exists()


def _user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_configure_py_over_stdin(cwd: Path):
    result = subprocess.run(
        [sys.executable, str(REPO / "configure.py")],
        input="\n".join(answers(rank="32")) + "\n", cwd=cwd, env=_user_env(),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (cwd / "config").iterdir()) == sorted(FILES)
    printed = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--print_config"], cwd=cwd, env=_user_env(),
        capture_output=True, text=True, timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["lora_rank"] == 32


def test_configure_py_stdin_closed_early(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(REPO / "configure.py")], input="sdxl\n", cwd=tmp_path, env=_user_env(),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_fine_tune_is_not_asked_or_written_a_lora_rank(cwd: Path):
    script = answers(model_type="full")
    del script[ORDER.index("lora_type"):ORDER.index("rank") + 1]  # no LoRA questions follow
    typed = Script(script)
    assert configure.main([], input_fn=typed) == 0
    assert not typed.asked("LoRA rank") and not typed.asked("LoRA library")
    assert written(cwd)["--model_type"] == "full"
    assert "--lora_rank" not in written(cwd)
    assert load_config([], env={}, cwd=cwd).ignored == ()


def test_options_without_effect_are_left_out_of_config_json():
    from simpletuner.wizard.files import option_entries

    # The same rule train.py warns with: a rank means nothing to a full fine-tune.
    answers = {"model_family": "flux", "pretrained_model_name_or_path": "m", "model_type": "full",
               "lora_rank": 32, "max_train_steps": 10, "learning_rate": 2e-4}
    entries = option_entries(answers, Path("config"))
    assert "--lora_rank" not in entries
    assert entries["--model_type"] == "full" and entries["--learning_rate"] == 0.0002
