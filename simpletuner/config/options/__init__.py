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

from simpletuner.config.option import Option
from simpletuner.config.options import adapters, data, model, objective, optimisation, outputs, run
from simpletuner.config.options.common import (  # re-exported: callers import them from here
    FLOW_FAMILIES,
    GROUPS,
    KOHYA_LORA_FAMILIES,
    MODEL_FAMILIES,
)

__all__ = ["ENVIRONMENT", "FLOW_FAMILIES", "GROUPS", "KOHYA_LORA_FAMILIES", "MODEL_FAMILIES", "OPTIONS",
           "OPTIONS_BY_NAME"]

# Each group module declares its own options; the table is their union, in
# display order.
OPTIONS: tuple[Option, ...] = (
    model.OPTIONS
    + adapters.OPTIONS
    + optimisation.OPTIONS
    + objective.OPTIONS
    + data.OPTIONS
    + outputs.OPTIONS
    + run.OPTIONS
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

# Settings that belong in config/config.env, read by train.sh before Python
# starts: (variable, default, help).  An empty default means unset.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    (
        "TRAINING_NUM_PROCESSES", "1",
        "Processes to launch, normally one per GPU; more than one trains with "
        "distributed data parallel.",
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
        "Extra arguments passed to accelerate launch, such as --multi_gpu.",
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
