"""Every user-facing option of the trainer, declared once.

The CLI parser, the JSON/TOML loaders, validation, ``documentation/OPTIONS.md``
and the configure wizard are all built from :data:`OPTIONS`, the union of the
group modules in this package (one per few related groups, so none grows too long).  Names, choices
and defaults follow SimpleTuner's option reference (our spec); the
flow-matching options follow finetrainers' names.

``implemented`` is honest: an option (or choice) that the trainer cannot do
yet is marked so, and validation rejects any non-default value for it with
"not implemented yet" instead of silently ignoring it.  Options that are not
implemented default to their "off" value so that a default config validates.

Positional fields of each entry: name, kind, default, help, group.

This module must stay import-light (no torch): ``train.py --help`` reads it.
"""

from __future__ import annotations

import dataclasses

from simpletuner.config.option import Option
from simpletuner.config.options import adapters, compat, data, model, objective, optimisation, outputs, run
from simpletuner.config.options import sharding  # FSDP2 and DeepSpeed (issue 18)
from simpletuner.config.options.common import (  # re-exported: callers import them from here
    FLOW_FAMILIES,
    GROUPS,
    KOHYA_LORA_FAMILIES,
    MODEL_FAMILIES,
)

__all__ = ["ENVIRONMENT", "FLOW_FAMILIES", "GROUPS", "KOHYA_LORA_FAMILIES", "MODEL_FAMILIES", "OPTIONS",
           "OPTIONS_BY_NAME", "SPELLING_TO_NAME"]

# Each group module declares its own options.
_DECLARED: tuple[Option, ...] = (
    model.OPTIONS
    + adapters.OPTIONS
    + optimisation.OPTIONS
    + objective.OPTIONS
    + data.OPTIONS
    + outputs.OPTIONS
    + run.OPTIONS
    + sharding.OPTIONS
)


def _with_spellings(option: Option) -> Option:
    extra = compat.SPELLINGS.get(option.name, ())
    return dataclasses.replace(option, spellings=option.spellings + extra) if extra else option


# The table: the group modules' options and SimpleTuner's names declared in
# compat (those no group module declares), each with its other spellings, in
# display order (stable, so each module's own order is kept within a group).
OPTIONS: tuple[Option, ...] = tuple(sorted(
    (_with_spellings(o) for o in _DECLARED + compat.undeclared(compat.OPTIONS, (o.name for o in _DECLARED))),
    key=lambda option: GROUPS.index(option.group),
))

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

# Every other accepted name of an option -> the option's name.
SPELLING_TO_NAME: dict[str, str] = {spelling: o.name for o in OPTIONS for spelling in o.spellings}

# Settings that belong in config/config.env, read by train.sh before Python
# starts: (variable, default, help).  An empty default means unset.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    (
        "TRAINING_NUM_PROCESSES", "1",
        "Processes to launch, normally one per GPU; more than one trains with "
        "distributed data parallel. With several machines, the total over all of them.",
    ),
    (
        "TRAINING_NUM_MACHINES", "1",
        "Machines (nodes) taking part in the run; the same value on every machine. "
        "See documentation/DISTRIBUTED.md.",
    ),
    (
        "TRAINING_MACHINE_RANK", "0",
        "This machine's number among TRAINING_NUM_MACHINES: 0 on the main machine, "
        "1, 2, ... on the others.",
    ),
    (
        "TRAINING_MAIN_PROCESS_IP", "",
        "Address of the machine with TRAINING_MACHINE_RANK=0, reachable from the "
        "others; needed with more than one machine.",
    ),
    (
        "TRAINING_MAIN_PROCESS_PORT", "",
        "TCP port on the main machine where the processes meet; unset picks a free "
        "port on one machine and 29500 across machines.",
    ),
    (
        "TRAINING_DYNAMO_BACKEND", "no",
        "torch.compile backend for the trained model; inductor compiles it, no "
        "leaves it eager.",
    ),
    (
        "SIMPLETUNER_LOG_LEVEL", "INFO",
        "How much the trainer logs; DEBUG adds detail useful in bug reports.",
    ),
    (
        "SIMPLETUNER_PROGRESS", "auto",
        "How training progress is shown: auto draws a bar on a terminal and otherwise "
        "prints a line every few seconds; bar and lines force one or the other.",
    ),
    (
        "VENV_PATH", ".venv",
        "Python virtual environment that train.sh activates.",
    ),
    (
        "ACCELERATE_EXTRA_ARGS", "",
        "Extra arguments passed to accelerate launch; a flag given here wins over "
        "the one train.sh would pass.",
    ),
    (
        "ACCELERATE_CONFIG_PATH", "",
        "accelerate config file (from accelerate config) used when present; unset "
        "uses accelerate's default location. Variables set here win over the file.",
    ),
    (
        "ENV", "",
        "Name of a configuration set: when given, the config is read from "
        "config/ENV/config.json instead of config/config.json.",
    ),
    (
        "CONFIG_BACKEND", "json",
        "Config file format to read: json or toml.",
    ),
    (
        "CONFIG_PATH", "",
        "Explicit path of the config file; overrides ENV. Without a .json or .toml "
        "extension, the CONFIG_BACKEND one is added unless a file of that exact name "
        "exists.",
    ),
)
