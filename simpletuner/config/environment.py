"""The launch variables (config/config.env or the environment), checked once.

``train.sh`` and ``train.py`` both read these; both call
:func:`launch_settings`, so a bad value gets the same message and exit code 2
whichever way the run was started.  ``train.sh`` says which variables came from
config.env (``SIMPLETUNER_ENV_FILE`` and ``SIMPLETUNER_ENV_FILE_VARS``), so a
message can point at the file to edit.

Nothing heavy is imported here unless a dynamo backend has to be checked.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
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
    # Several machines: TRAINING_NUM_PROCESSES counts the processes of all of them.
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: Optional[str] = None
    main_process_port: Optional[int] = None
    # accelerate's own config file (ACCELERATE_CONFIG_PATH, else accelerate's default
    # location) when it exists; None when there is none.
    accelerate_config: Optional[Path] = None
    # The launch variables given (in the environment or config.env): a value the
    # user set wins over the accelerate config file, our defaults do not.
    given: frozenset[str] = frozenset()

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines


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
        ("TRAINING_NUM_MACHINES", "num_machines", _num_machines),
        ("TRAINING_MACHINE_RANK", "machine_rank", _machine_rank),
        ("TRAINING_MAIN_PROCESS_IP", "main_process_ip", _main_process_ip),
        ("TRAINING_MAIN_PROCESS_PORT", "main_process_port", _main_process_port),
        ("ACCELERATE_CONFIG_PATH", "accelerate_config", _accelerate_config),
    ):
        try:
            settings[key] = check(env)
        except ConfigError as error:
            problems.append(f"{error}{where_set(name, env)}")
    problems += _unknown_file_variables(env)
    if not problems:
        problems = _machine_problems(settings, env)
    if problems:
        raise ConfigError("\n".join(problems))
    given = frozenset(name for name in LAUNCH_VARIABLES if env.get(name, "").strip())
    return LaunchSettings(**settings, given=given)


# The variables that become ``accelerate launch`` flags.
LAUNCH_VARIABLES = (
    "TRAINING_NUM_PROCESSES", "TRAINING_DYNAMO_BACKEND", "TRAINING_NUM_MACHINES", "TRAINING_MACHINE_RANK",
    "TRAINING_MAIN_PROCESS_IP", "TRAINING_MAIN_PROCESS_PORT",
)


# Names with our prefixes that something reads; config.env may hold any other
# variable (HF_HOME, CUDA_VISIBLE_DEVICES, accelerate's own ACCELERATE_*).
KNOWN_VARIABLES = frozenset((
    *LAUNCH_VARIABLES, "SIMPLETUNER_LOG_LEVEL", "SIMPLETUNER_PROGRESS", "SIMPLETUNER_PUBLISH_RETRY_SECONDS",
    ENV_FILE_VARIABLE, ENV_FILE_NAMES_VARIABLE,
))
_OUR_PREFIXES = ("TRAINING_", "SIMPLETUNER_")


def _unknown_file_variables(env: Mapping[str, str]) -> list[str]:
    """A misspelt launch variable in config.env (TRAINING_NUM_PROCESS=8) would silently train on one GPU."""
    env_file = env.get(ENV_FILE_VARIABLE, "")
    problems = []
    for name in env.get(ENV_FILE_NAMES_VARIABLE, "").split():
        if name.startswith(_OUR_PREFIXES) and name not in KNOWN_VARIABLES:
            close = difflib.get_close_matches(name, sorted(KNOWN_VARIABLES - {ENV_FILE_VARIABLE,
                                                                              ENV_FILE_NAMES_VARIABLE}), n=1)
            hint = f"did you mean {close[0]}?" if close else "config/config.env.example lists the ones read"
            problems.append(f"{env_file}: unknown variable {name}, nothing reads it; {hint}")
    return problems


def _machine_problems(settings: dict, env: Mapping[str, str]) -> list[str]:
    """The checks that involve two variables: each machine starts the same number of processes."""
    machines, rank, processes = settings["num_machines"], settings["machine_rank"], settings["num_processes"]
    given_flags = flag_names(settings["accelerate_args"])
    problems = []
    if processes % machines:
        problems.append(
            f"TRAINING_NUM_PROCESSES={processes} cannot be split evenly over TRAINING_NUM_MACHINES={machines}: "
            "it counts the processes of all machines together (e.g. 2 machines x 8 GPUs = 16)"
            f"{where_set('TRAINING_NUM_PROCESSES', env)}"
        )
    if rank >= machines:
        problems.append(
            f"TRAINING_MACHINE_RANK={rank}: machines are numbered 0 to {machines - 1} "
            f"(TRAINING_NUM_MACHINES={machines}); give each machine its own number, 0 on the main one"
            f"{where_set('TRAINING_MACHINE_RANK', env)}"
        )
    if machines > 1 and settings["main_process_ip"] is None and "main_process_ip" not in given_flags \
            and settings["accelerate_config"] is None:
        problems.append(
            f"TRAINING_NUM_MACHINES={machines} needs TRAINING_MAIN_PROCESS_IP, the address of the machine with "
            "TRAINING_MACHINE_RANK=0 that the others can reach; set it in config.env on every machine"
        )
    return problems


def flag_names(args: list[str]) -> set[str]:
    """The ``accelerate launch`` flags in ``args``, as accelerate names them (--num-machines=2 -> num_machines)."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in args if arg.startswith("--") and len(arg) > 2}


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


def _num_machines(env: Mapping[str, str]) -> int:
    raw = env.get("TRAINING_NUM_MACHINES", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"TRAINING_NUM_MACHINES={raw}: not a whole number of at least 1; use the number of "
                          "machines (nodes) taking part, the same on every one")
    return int(raw)


def _machine_rank(env: Mapping[str, str]) -> int:
    raw = env.get("TRAINING_MACHINE_RANK", "").strip() or "0"
    if not raw.isdigit():
        raise ConfigError(f"TRAINING_MACHINE_RANK={raw}: not a whole number; use 0 on the main machine, "
                          "1, 2, ... on the others")
    return int(raw)


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")  # a DNS name: dot-separated labels


def _main_process_ip(env: Mapping[str, str]) -> Optional[str]:
    raw = env.get("TRAINING_MAIN_PROCESS_IP", "").strip()
    if not raw:
        return None
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        if not _HOST_NAME.match(raw):
            raise ConfigError(f"TRAINING_MAIN_PROCESS_IP={raw}: not an IP address or host name; use the address "
                              "of the machine with TRAINING_MACHINE_RANK=0 (e.g. 10.0.0.1)") from None
    return raw


def _main_process_port(env: Mapping[str, str]) -> Optional[int]:
    raw = env.get("TRAINING_MAIN_PROCESS_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"TRAINING_MAIN_PROCESS_PORT={raw}: not a TCP port; use a free port from 1024 to 65535 "
                          "that the other machines can reach (e.g. 29500)")
    return int(raw)


def default_accelerate_config(env: Mapping[str, str]) -> Path:
    """Where ``accelerate config`` saves its file (accelerate's own rule, without importing it)."""
    cache = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(cache)) / "accelerate" / "default_config.yaml"


def _accelerate_config(env: Mapping[str, str]) -> Optional[Path]:
    raw = env.get("ACCELERATE_CONFIG_PATH", "").strip()
    if not raw:
        default = default_accelerate_config(env)
        return default if default.is_file() else None
    path = Path(os.path.expanduser(raw))
    if not path.is_file():
        raise ConfigError(f"ACCELERATE_CONFIG_PATH={raw}: no such file; write one with `accelerate config "
                          "--config_file PATH` or leave the variable unset")
    return path


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
