"""One call that turns argv + environment into a validated TrainConfig."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.config.model import make_config
from simpletuner.config.rules import validate
from simpletuner.config.sources import collect_values


def load_config(
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
) -> Any:
    """Defaults < config file < command line, validated; raises ConfigError."""
    values, explicit, path = collect_values(
        argv, os.environ if env is None else env, Path.cwd() if cwd is None else cwd
    )
    validate(values)
    return make_config(values, explicit, path)
