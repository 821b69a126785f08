"""One call that turns argv + environment into a validated TrainConfig."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.config.model import make_config
from simpletuner.config.rules import validate
from simpletuner.config.sources import collect_values, locate_config_file
from simpletuner.errors import ConfigError


def load_config(
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
) -> Any:
    """Defaults < config file < command line, validated; raises ConfigError."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    values, explicit, path = collect_values(argv, env, cwd)
    try:
        validate(values)
    except ConfigError as error:
        if path is not None or values["model_family"]:
            raise
        # No file and not even a family: most often train.sh/train.py was run
        # from outside the project folder.
        looked_for, _required = locate_config_file(env, cwd)
        raise ConfigError(
            f"{error}\nno config file was read: {looked_for} does not exist; run from your project folder "
            "(the one holding config/) or set CONFIG_PATH=path/to/config.json"
        ) from None
    return make_config(values, explicit, path)
