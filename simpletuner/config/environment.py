"""The launch variables (config/config.env or the environment), checked once.

``train.sh`` and ``train.py`` both read these; both call
:func:`launch_settings`, so a bad value gets the same message and exit code 2
whichever way the run was started.  ``train.sh`` says which variables came from
config.env (``SIMPLETUNER_ENV_FILE`` and ``SIMPLETUNER_ENV_FILE_VARS``), so a
message can point at the file to edit.

Nothing heavy is imported here unless a dynamo backend has to be checked.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from typing import Mapping, Optional

from simpletuner.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PROGRESS_MODES = ("auto", "bar", "lines")

# Set by train.sh: the config.env it read, and the names that file set.
ENV_FILE_VARIABLE = "SIMPLETUNER_ENV_FILE"
ENV_FILE_NAMES_VARIABLE = "SIMPLETUNER_ENV_FILE_VARS"


@dataclass(frozen=True)
class LaunchSettings:
    num_processes: int = 1
    dynamo_backend: Optional[str] = None
    log_level: str = "INFO"
    progress: str = "auto"
    accelerate_args: list[str] = field(default_factory=list)


def launch_settings(env: Mapping[str, str]) -> LaunchSettings:
    """Every launch variable, checked; raises ConfigError naming the variable and where it was set."""
    problems = []
    settings = {}
    for name, key, check in (
        ("TRAINING_NUM_PROCESSES", "num_processes", _num_processes),
        ("TRAINING_DYNAMO_BACKEND", "dynamo_backend", dynamo_backend),
        ("SIMPLETUNER_LOG_LEVEL", "log_level", _log_level),
        ("SIMPLETUNER_PROGRESS", "progress", _progress),
        ("ACCELERATE_EXTRA_ARGS", "accelerate_args", _accelerate_args),
    ):
        try:
            settings[key] = check(env)
        except ConfigError as error:
            problems.append(f"{error}{where_set(name, env)}")
    if problems:
        raise ConfigError("\n".join(problems))
    return LaunchSettings(**settings)


def where_set(name: str, env: Mapping[str, str]) -> str:
    """' (set in config/config.env)' when train.sh read ``name`` from that file, else ''."""
    env_file = env.get(ENV_FILE_VARIABLE, "")
    if env_file and name in env.get(ENV_FILE_NAMES_VARIABLE, "").split():
        return f" (set in {env_file})"
    return ""


def dynamo_backend(env: Mapping[str, str]) -> Optional[str]:
    """The torch.compile backend TRAINING_DYNAMO_BACKEND names, checked; None when unset.

    train.sh hands the same value to ``accelerate launch --dynamo_backend``
    when it starts several processes; ``build_accelerator`` reads it as well,
    so ``python train.py`` compiles too.
    """
    raw = env.get("TRAINING_DYNAMO_BACKEND", "").strip()
    if not raw:
        return None
    if raw.lower() == "no":  # the wizard's default; no need to import accelerate (and torch) to know it
        return "no"
    from accelerate.utils import DynamoBackend

    known = [backend.value.lower() for backend in DynamoBackend]
    backend = raw.lower()
    if backend not in known:
        raise ConfigError(
            f"TRAINING_DYNAMO_BACKEND={raw}: not a torch.compile backend accelerate knows; "
            f"use no (no compilation), inductor, or one of: {', '.join(known)}"
        )
    if backend == "inductor" and not _cpp_compiler(env):
        raise ConfigError(
            "TRAINING_DYNAMO_BACKEND=inductor needs a C++ compiler (g++ or clang++, or one named by CXX) "
            "on PATH; install one or set TRAINING_DYNAMO_BACKEND=no"
        )
    return backend


def _cpp_compiler(env: Mapping[str, str]) -> Optional[str]:
    candidates = [env.get("CXX", ""), "g++", "clang++", "c++"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


def _num_processes(env: Mapping[str, str]) -> int:
    raw = env.get("TRAINING_NUM_PROCESSES", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"TRAINING_NUM_PROCESSES={raw}: not a whole number of at least 1; use the number of GPUs to train on"
        )
    return int(raw)


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("SIMPLETUNER_LOG_LEVEL", "")
    level = raw.strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigError(f"SIMPLETUNER_LOG_LEVEL={raw.strip()}: use one of {', '.join(LOG_LEVELS)}")
    return level


def _progress(env: Mapping[str, str]) -> str:
    raw = env.get("SIMPLETUNER_PROGRESS", "")
    mode = raw.strip().lower() or "auto"
    if mode not in PROGRESS_MODES:
        raise ConfigError(
            f"SIMPLETUNER_PROGRESS={raw.strip()}: use auto (a bar on a terminal, otherwise a line every few "
            "steps), bar or lines"
        )
    return mode


def _accelerate_args(env: Mapping[str, str]) -> list[str]:
    raw = env.get("ACCELERATE_EXTRA_ARGS", "")
    try:
        return shlex.split(raw)
    except ValueError as error:
        raise ConfigError(f"ACCELERATE_EXTRA_ARGS={raw}: cannot be split into arguments ({error})") from None
