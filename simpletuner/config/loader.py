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
    hardware: Any = None,
) -> Any:
    """Defaults < config file < command line, validated; raises ConfigError.

    ``hardware`` (a ``quantisation.matrix.Hardware``) stands in for the
    detected accelerator, so tests can ask about GPU-only combinations.
    """
    env = os.environ if env is None else env
    values, explicit, path = collect_values(argv, env, Path.cwd() if cwd is None else cwd)
    validate(values, env, hardware)
    return make_config(values, explicit, path)
