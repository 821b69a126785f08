"""The wizard's files: rendered from the answers, checked with the trainer's loaders, written all or none.

* ``config.json``: the required options plus those that differ from their defaults;
* ``multidatabackend.json``: one local image dataset per folder and one text-embed cache;
* ``config.env``: the launch settings ``train.sh`` reads;
* ``lycoris_config.json``: the LyCORIS adapter, when one is trained;
* ``user_prompt_library.json``: validation prompts beyond the first, when given.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from simpletuner.config.inert import set_aside_inert
from simpletuner.config.options import ENVIRONMENT, OPTIONS, OPTIONS_BY_NAME

TEXT_EMBEDS_ID = "text-embeds"
CONFIG_FILE = "config.json"
DATA_FILE = "multidatabackend.json"
ENV_FILE = "config.env"
LYCORIS_FILE = "lycoris_config.json"
LIBRARY_FILE = "user_prompt_library.json"
REQUIRED = ("model_family", "pretrained_model_name_or_path", "data_backend_config")


def cache_root(output_dir: str) -> Path:
    parent = Path(output_dir).parent
    return Path("cache") if str(parent) in ("", ".") else parent / "cache"


def dataset_id(folder: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).name).strip("-") or "my-images"
    if name == TEXT_EMBEDS_ID:
        name = "my-images"
    unique, number = name, 2
    while unique in taken:
        unique, number = f"{name}-{number}", number + 1
    return unique


def option_entries(answers: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """config.json: the required options plus those that differ from their defaults."""
    values = {name: value for name, value in answers.items() if name in OPTIONS_BY_NAME}
    values["data_backend_config"] = str(config_dir / DATA_FILE)
    if answers.get("lycoris_spec"):
        values["lycoris_config"] = str(config_dir / LYCORIS_FILE)
    if answers.get("prompt_library"):
        values["user_prompt_library"] = str(config_dir / LIBRARY_FILE)
    if values.get("max_train_steps", 0) > 0:
        values["num_train_epochs"] = 0  # the step count decides, as the trainer does
    # An option that would have no effect with the other answers is not written:
    # set aside, it is back at its default and so left out below.
    merged, _ignored = set_aside_inert({**{option.name: option.default for option in OPTIONS}, **values})
    values = {name: merged[name] for name in values}
    entries: dict[str, Any] = {}
    for option in OPTIONS:  # table order keeps the file readable
        if option.name not in values:
            continue
        value = values[option.name]
        if option.name in REQUIRED or value != option.default:
            entries[f"--{option.name}"] = _json_value(value)
    return entries


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return int(value)
    if isinstance(value, list):
        return ",".join(value)  # SimpleTuner style: "tensorboard,wandb"
    return value


def datasets(answers: dict[str, Any]) -> list[dict[str, Any]]:
    family = answers["model_family"]
    cache = cache_root(answers["output_dir"])
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    for folder in answers["dataset_dirs"]:
        name = dataset_id(folder, taken)
        taken.add(name)
        image: dict[str, Any] = {
            "id": name, "type": "local", "dataset_type": "image", "instance_data_dir": folder,
            "caption_strategy": answers["caption_strategy"],
        }
        if answers.get("instance_prompt"):
            image["instance_prompt"] = answers["instance_prompt"]
        image.update({
            "resolution": int(answers["resolution"]),
            "resolution_type": OPTIONS_BY_NAME["resolution_type"].default,
            "cache_dir_vae": str(cache / "vae" / family / name),
        })
        entries.append(image)
    entries.append({"id": TEXT_EMBEDS_ID, "type": "local", "dataset_type": "text_embeds", "default": True,
                    "cache_dir": str(cache / "text" / family)})
    return entries


def environment(answers: dict[str, Any]) -> str:
    machines = answers.get("num_machines", 1)
    # TRAINING_NUM_PROCESSES is the total over all machines, as accelerate's --num_processes.
    chosen = {"TRAINING_NUM_PROCESSES": str(answers.get("num_processes", 1) * machines)}
    if machines > 1:
        chosen.update({
            "TRAINING_NUM_MACHINES": str(machines),
            "TRAINING_MACHINE_RANK": str(answers["machine_rank"]),
            "TRAINING_MAIN_PROCESS_IP": answers["main_process_ip"],
            "TRAINING_MAIN_PROCESS_PORT": str(answers["main_process_port"]),
        })
    lines = [
        "# Launch settings read by train.sh (written by configure.py).",
        "# Training options belong in config.json; see documentation/OPTIONS.md.",
    ]
    for name, default, text in ENVIRONMENT:
        if name in ("ENV", "CONFIG_BACKEND", "CONFIG_PATH"):
            continue  # these choose the config file; set them when launching
        lines += ["", f"# {text}", f"{name}={chosen.get(name, default)}"]
    return "\n".join(lines) + "\n"


def render(answers: dict[str, Any], config_dir: Path) -> dict[Path, str]:
    files = {
        config_dir / CONFIG_FILE: json.dumps(option_entries(answers, config_dir), indent=2) + "\n",
        config_dir / DATA_FILE: json.dumps(datasets(answers), indent=2) + "\n",
        config_dir / ENV_FILE: environment(answers),
    }
    if answers.get("lycoris_spec"):
        files[config_dir / LYCORIS_FILE] = json.dumps(answers["lycoris_spec"], indent=2) + "\n"
    if answers.get("prompt_library"):
        files[config_dir / LIBRARY_FILE] = json.dumps(answers["prompt_library"], indent=2) + "\n"
    return files


def check(files: dict[Path, str], config_dir: Path) -> None:
    """Validate what is about to be written with train.py's own loader (ConfigError naming every problem).

    The files are tried in a scratch copy of the config folder, so paths
    between them resolve as they will once written.
    """
    from simpletuner.config.loader import load_config

    with tempfile.TemporaryDirectory(prefix="wizard-check-") as scratch:
        trial = {path: Path(scratch) / path.name for path in files}
        for path, text in files.items():
            for other, moved in trial.items():
                text = text.replace(json.dumps(str(other))[1:-1], json.dumps(str(moved))[1:-1])
            trial[path].write_text(text, encoding="utf-8")
        load_config([], env={"CONFIG_PATH": str(trial[config_dir / CONFIG_FILE])}, cwd=Path.cwd(),
                    check_datasets=True)


def existing(config_dir: Path) -> list[Path]:
    return [config_dir / name for name in (CONFIG_FILE, DATA_FILE, ENV_FILE, LYCORIS_FILE, LIBRARY_FILE)
            if (config_dir / name).exists()]


def write_all(files: dict[Path, str]) -> None:
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
