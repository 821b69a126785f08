"""``configure.py``: write a first training config by answering a few questions.

The wizard writes three files into the config folder (``config/`` unless told
otherwise):

* ``config.json``: the options that differ from their defaults, plus the
  required ones;
* ``multidatabackend.json``: one local image dataset and one text-embed cache;
* ``config.env``: the launch settings ``train.sh`` reads.

Choices, defaults and help texts come from the option table
(:mod:`simpletuner.config.options`) and every answer goes through the same
coercion and validation as ``train.py``, so the wizard cannot offer something
the trainer would reject.  Only implemented values are offered.

Nothing is written until every question is answered and the result has passed
validation; Ctrl-C (exit 130) or end of input (exit 1) leave no files behind.
Existing files are only replaced after the user says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from simpletuner.config.coerce import coerce_value
from simpletuner.config.inert import set_aside_inert
from simpletuner.config.option import Option
from simpletuner.config.options import ENVIRONMENT, OPTIONS, OPTIONS_BY_NAME
from simpletuner.errors import USER_ERROR_EXIT_CODE, ConfigError

InputFn = Callable[[str], str]

# A suggested base model per family, offered as the default answer.  Only
# families that pass ``is_value_implemented`` are ever offered.
SUGGESTED_MODELS = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "legacy": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd3": "stabilityai/stable-diffusion-3.5-medium",
    "flux": "black-forest-labs/FLUX.1-dev",
    "pixart_sigma": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "kolors": "Kwai-Kolors/Kolors-diffusers",
}

DEFAULT_DATASET_DIR = "datasets/my-images"
TEXT_EMBEDS_ID = "text-embeds"
CONFIG_FILE = "config.json"
DATA_FILE = "multidatabackend.json"
ENV_FILE = "config.env"


class _Cancelled(Exception):
    """The user declined to overwrite existing files."""


def main(
    argv: Optional[Sequence[str]] = None,
    input_fn: InputFn = input,
    output_dir: str | os.PathLike = "config",
) -> int:
    """Run the wizard; returns the exit code (0 written, 1 nothing written, 130 Ctrl-C)."""
    parser = argparse.ArgumentParser(
        prog="configure.py",
        description="Answer a few questions to write config.json, multidatabackend.json "
        "and config.env.",
    )
    parser.add_argument(
        "--config_dir", "--config-dir", default=str(output_dir),
        help="folder that receives the three files (default: %(default)s)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    from simpletuner.logs import setup_logging

    # Library chatter (torch, torchao, bitsandbytes at import) stays off the console.
    setup_logging(os.environ)
    config_dir = Path(args.config_dir)
    try:
        _confirm_overwrite(config_dir, input_fn)
        answers = _ask_everything(input_fn)
        files = _render_files(answers, config_dir)
        _check(files, answers)
        _write_all(files)
    except KeyboardInterrupt:
        print("\ncancelled; nothing was written", file=sys.stderr)
        return 130
    except EOFError:
        print("\nno more input; nothing was written", file=sys.stderr)
        return 1
    except _Cancelled:
        print("keeping the existing files; nothing was written")
        return 1
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    _print_summary(files, config_dir, answers)
    return 0


# ------------------------------------------------------------------ questions


def offered_choices(option: Option) -> list:
    """The choices the wizard offers: the option's choices that are implemented."""
    if not option.choices:
        return []
    return [choice for choice in option.choices if option.is_value_implemented(choice)]


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def ask_option(
    input_fn: InputFn,
    name: str,
    label: str,
    default: Any = None,
    check: Optional[Callable[[Any], Optional[str]]] = None,
    option: Optional[Option] = None,
) -> Any:
    """Ask for one option's value until the answer is valid; returns it typed.

    ``default`` overrides the table's default for the prompt; ``check`` may
    return a message that rejects an otherwise valid value.
    """
    option = option or OPTIONS_BY_NAME[name]
    choices = offered_choices(option)
    if default is None:
        default = option.default
    if choices and default is not None and not option.is_value_implemented(default):
        default = choices[0]
    if default is None and choices:
        default = choices[0]
    shown_default = _show(default)
    prompt = label
    if choices:
        prompt += " (" + ", ".join(str(c) for c in choices) + ")"
    prompt += f" [{shown_default}]: " if shown_default else ": "
    print(f"\n{option.help}")
    while True:
        raw = input_fn(prompt).strip()
        if not raw:
            if not shown_default:
                print("  an answer is required")
                continue
            raw = shown_default
        problem = None
        try:
            value = coerce_value(option, raw, "answer")
        except ConfigError as error:
            # With choices, the list of offered ones (added below) says it all.
            problem = f"{raw!r} is not offered" if choices else str(error).split(": ", 1)[-1]
            value = None
        if problem is None and not option.is_value_implemented(value):
            problem = f"{_show(value)} is not implemented yet"
        if problem is None and check is not None:
            problem = check(value)
        if problem is None:
            return value
        if choices:
            problem = f"{problem}; choose one of: " + ", ".join(str(c) for c in choices)
        print(f"  {problem}")


def _ask_text(input_fn: InputFn, label: str, default: str = "") -> str:
    prompt = f"{label} [{default}]: " if default else f"{label}: "
    while True:
        answer = input_fn(prompt).strip() or default
        if answer:
            return answer
        print("  an answer is required")


def _ask_yes_no(input_fn: InputFn, question: str, default: bool = False) -> bool:
    hint = "[Y/n]" if default else "[y/N]"
    while True:
        answer = input_fn(f"{question} {hint}: ").strip().lower()
        if not answer:
            return default
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        print("  please answer y or n")


def _confirm_overwrite(config_dir: Path, input_fn: InputFn) -> None:
    existing = [config_dir / name for name in (CONFIG_FILE, DATA_FILE, ENV_FILE)
                if (config_dir / name).exists()]
    if not existing:
        return
    names = ", ".join(str(path) for path in existing)
    if not _ask_yes_no(input_fn, f"{names} already exist. Overwrite?", default=False):
        raise _Cancelled


def _not_a_file(value: Any) -> Optional[str]:
    if value and Path(value).exists() and not Path(value).is_dir():
        return f"{value} is a file; give a folder"
    return None


def _not_none_with_trackers(value: Any) -> Optional[str]:
    if "none" in value and len(value) > 1:
        return "'none' cannot be combined with trackers"
    return None


def _ask_everything(input_fn: InputFn) -> dict[str, Any]:
    print("This writes a training config. Press Enter to keep the value in [brackets].")
    a: dict[str, Any] = {}
    a["model_family"] = ask_option(input_fn, "model_family", "Model family")
    a["pretrained_model_name_or_path"] = ask_option(
        input_fn, "pretrained_model_name_or_path", "Base model (Hub id or local folder)",
        default=SUGGESTED_MODELS.get(a["model_family"]),
    )
    a["output_dir"] = ask_option(input_fn, "output_dir", "Output folder", check=_not_a_file)
    print("\nFolder with your training images (searched recursively).")
    a["dataset_dir"] = _ask_text(input_fn, "Dataset folder", DEFAULT_DATASET_DIR)
    a["caption_strategy"] = ask_option(input_fn, "caption_strategy", "Caption strategy")
    if a["caption_strategy"] == "instanceprompt":
        a["instance_prompt"] = _ask_text(input_fn, "Caption for every image (instance prompt)")
    a["resolution"] = ask_option(input_fn, "resolution", "Resolution", check=_whole_pixels)
    a["model_type"] = ask_option(input_fn, "model_type", "Training type")
    if _acts("lora_rank", a):
        a["lora_rank"] = ask_option(input_fn, "lora_rank", "LoRA rank")
    a["learning_rate"] = ask_option(input_fn, "learning_rate", "Learning rate")
    a["max_train_steps"] = ask_option(
        input_fn, "max_train_steps", "Max train steps (0: count epochs instead)"
    )
    if a["max_train_steps"] == 0:
        a["num_train_epochs"] = ask_option(
            input_fn, "num_train_epochs", "Number of epochs", check=_positive
        )
    a["train_batch_size"] = ask_option(input_fn, "train_batch_size", "Batch size")
    a["checkpointing_steps"] = ask_option(input_fn, "checkpointing_steps", "Checkpointing steps")
    a["mixed_precision"] = ask_option(input_fn, "mixed_precision", "Mixed precision", check=_mixed_precision_runs_here)
    a["base_model_precision"] = ask_option(
        input_fn, "base_model_precision", "Quantise the base model", check=_runs_here
    )
    a["report_to"] = ask_option(
        input_fn, "report_to", "Report to", check=_not_none_with_trackers
    )
    return a


def _acts(name: str, answers: dict[str, Any]) -> bool:
    """Whether option ``name`` would have an effect given the answers so far (the trainer's own rule)."""
    values = {option.name: option.default for option in OPTIONS}
    values.update({key: value for key, value in answers.items() if key in values})
    return OPTIONS_BY_NAME[name].inert_reason(values) is None


def _runs_here(value: Any) -> Optional[str]:
    """The support matrix's refusal of a LoRA on this machine at that precision."""
    from simpletuner.quantisation.matrix import Combination, check, detect_hardware

    problem = check(Combination(value), detect_hardware())
    return problem.split(": ", 1)[1] if problem else None


def _mixed_precision_runs_here(value: Any) -> Optional[str]:
    """The trainer's own refusal of fp16 on a machine without a GPU."""
    from simpletuner.config.training_rules import fp16_supported

    problem = fp16_supported({"mixed_precision": value})
    return problem.removeprefix("--mixed_precision=") if problem else None


def _whole_pixels(value: Any) -> Optional[str]:
    if not float(value).is_integer() or value < 8:
        return "give a whole number of pixels, 8 or more (for example 1024)"
    return None


def _positive(value: Any) -> Optional[str]:
    return None if value > 0 else "give 1 or more"


# ------------------------------------------------------------------- writing


def _cache_root(output_dir: str) -> Path:
    parent = Path(output_dir).parent
    return Path("cache") if str(parent) in ("", ".") else parent / "cache"


def _dataset_id(folder: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).name).strip("-")
    if not name or name == TEXT_EMBEDS_ID:
        return "my-images"
    return name


def _option_entries(answers: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """config.json: the required options plus those that differ from their defaults."""
    values = {
        name: value for name, value in answers.items() if name in OPTIONS_BY_NAME
    }
    values["data_backend_config"] = str(config_dir / DATA_FILE)
    if values["max_train_steps"] > 0:
        values["num_train_epochs"] = 0  # the step count decides, as the trainer does
    # An option that would have no effect with the other answers is not written:
    # set aside, it is back at its default and so left out below.
    merged, _ignored = set_aside_inert({**{option.name: option.default for option in OPTIONS}, **values})
    values = {name: merged[name] for name in values}
    required = ("model_family", "pretrained_model_name_or_path", "data_backend_config")
    entries: dict[str, Any] = {}
    for option in OPTIONS:  # table order keeps the file readable
        if option.name not in values:
            continue
        value = values[option.name]
        if option.name in required or value != option.default:
            entries[f"--{option.name}"] = _json_value(value)
    return entries


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return int(value)
    if isinstance(value, list):
        return ",".join(value)  # SimpleTuner style: "tensorboard,wandb"
    return value


def _datasets(answers: dict[str, Any]) -> list[dict[str, Any]]:
    family = answers["model_family"]
    dataset_id = _dataset_id(answers["dataset_dir"])
    cache = _cache_root(answers["output_dir"])
    image: dict[str, Any] = {
        "id": dataset_id,
        "type": "local",
        "dataset_type": "image",
        "instance_data_dir": answers["dataset_dir"],
        "caption_strategy": answers["caption_strategy"],
    }
    if answers.get("instance_prompt"):
        image["instance_prompt"] = answers["instance_prompt"]
    image.update({
        "resolution": int(answers["resolution"]),
        "resolution_type": OPTIONS_BY_NAME["resolution_type"].default,
        "cache_dir_vae": str(cache / "vae" / family / dataset_id),
    })
    text = {
        "id": TEXT_EMBEDS_ID,
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": str(cache / "text" / family),
    }
    return [image, text]


def _environment() -> str:
    lines = [
        "# Launch settings read by train.sh (written by configure.py).",
        "# Training options belong in config.json; see documentation/OPTIONS.md.",
    ]
    for name, default, text in ENVIRONMENT:
        if name in ("ENV", "CONFIG_BACKEND", "CONFIG_PATH"):
            continue  # these choose the config file; set them when launching
        lines += ["", f"# {text}", f"{name}={default}"]
    return "\n".join(lines) + "\n"


def _render_files(answers: dict[str, Any], config_dir: Path) -> dict[Path, str]:
    return {
        config_dir / CONFIG_FILE: json.dumps(_option_entries(answers, config_dir), indent=2) + "\n",
        config_dir / DATA_FILE: json.dumps(_datasets(answers), indent=2) + "\n",
        config_dir / ENV_FILE: _environment(),
    }


def _check(files: dict[Path, str], answers: dict[str, Any]) -> None:
    """Validate what is about to be written with the trainer's own loaders."""
    from simpletuner.config.loader import load_config
    from simpletuner.config.model import option_values
    from simpletuner.data.schema import parse_data_backend_config
    from simpletuner.errors import DataError

    config_path, data_path = list(files)[:2]
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / CONFIG_FILE
        trial.write_text(files[config_path], encoding="utf-8")
        config = load_config([], env={"CONFIG_PATH": str(trial)}, cwd=Path.cwd())
    try:
        parse_data_backend_config(
            json.loads(files[data_path]), option_values(config), str(data_path)
        )
    except DataError:
        pass  # the image folder does not exist yet; the summary says so


def _write_all(files: dict[Path, str]) -> None:
    """Write every file or none: each goes to a temporary name first."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            staged.append((Path(temp), path))
        for temp, path in staged:
            os.replace(temp, path)
    finally:
        for temp, _path in staged:
            if temp.exists():
                temp.unlink()


def _print_summary(files: dict[Path, str], config_dir: Path, answers: dict[str, Any]) -> None:
    print()
    for path in files:
        print(f"wrote {path}")
    if not Path(answers["dataset_dir"]).is_dir():
        print(f"note: {answers['dataset_dir']} does not exist yet; put your images there")
    standard = config_dir.resolve() == (Path.cwd() / "config").resolve()
    if standard:
        print("start training with: bash train.sh   (or: python train.py)")
    else:
        print(f"start training with: CONFIG_PATH={config_dir / CONFIG_FILE} python train.py")


if __name__ == "__main__":
    raise SystemExit(main())
