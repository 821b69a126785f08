"""The resolved configuration object handed to the rest of the trainer.

``TrainConfig`` is a frozen dataclass generated from the option table, so it
has exactly one attribute per option and cannot be mutated behind the
trainer's back.  It also remembers which options the user set and which file
they came from, for the startup summary and for redaction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from simpletuner.config.options import OPTIONS, OPTIONS_BY_NAME

REDACTED = "***redacted***"

_META_FIELDS = [
    ("config_file", Optional[str], dataclasses.field(default=None, compare=False)),
    ("explicit", frozenset, dataclasses.field(default=frozenset(), compare=False)),
    # One line per option set to a value that has no effect here (see config/inert.py).
    ("ignored", tuple, dataclasses.field(default=(), compare=False)),
]

TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(option.name, Any) for option in OPTIONS] + _META_FIELDS,
    frozen=True,
)
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = "Every option's resolved value, read-only. Built by load_config()."


def make_config(
    values: dict[str, Any], explicit: set[str], config_file: Optional[Path], ignored: tuple[str, ...] = ()
) -> Any:
    return TrainConfig(
        **values,
        config_file=str(config_file) if config_file else None,
        explicit=frozenset(explicit),
        ignored=tuple(ignored),
    )


def option_values(config: Any) -> dict[str, Any]:
    """{option name: value} for every option, secrets included (never log this)."""
    return {option.name: getattr(config, option.name) for option in OPTIONS}


def redacted_values(config: Any) -> dict[str, Any]:
    """{option name: value} safe to print, log or save: secrets are masked."""
    values = option_values(config)
    for name, value in values.items():
        if OPTIONS_BY_NAME[name].secret and value not in (None, ""):
            values[name] = REDACTED
    return values


def replace(config: Any, **changes: Any) -> Any:
    """A copy of ``config`` with some values changed (the original is frozen)."""
    return dataclasses.replace(config, **changes)
