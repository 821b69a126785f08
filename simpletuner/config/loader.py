"""One call that turns argv + environment into a validated TrainConfig."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.config.inert import set_aside_inert
from simpletuner.config.model import make_config
from simpletuner.config.rules import information_only, rule_problems
from simpletuner.config.sources import gather_values, locate_config_file
from simpletuner.config.spellings import apply_simpletuner_meanings, respell
from simpletuner.errors import ConfigError
from simpletuner.families.flavours import with_flavour_model


def load_config(
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
    check_datasets: bool = False,
    hardware: Any = None,
) -> Any:
    """Defaults < config file < command line, validated; raises ConfigError.

    The error lists every problem found, one per line: each unknown key and
    bad value of the config file and the command line, and with
    ``check_datasets`` also those of the --data_backend_config file, so that
    one run shows every mistake of both files.  Cross-option rules are judged
    once every value could be read (a value left at its default by a typo
    would make them report mistakes the user did not make).  ``hardware`` (a
    ``quantisation.matrix.Hardware``) stands in for the detected accelerator,
    so tests can ask about GPU-only combinations.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    values, explicit, path, problems, spelled = gather_values(argv, env, cwd)
    values, ignored = set_aside_inert(apply_simpletuner_meanings(values))
    ignored = tuple(respell(ignored, spelled))
    if not problems:
        problems = respell(rule_problems(values, env, hardware), spelled)
    if check_datasets and values["data_backend_config"] and not information_only(values):
        from simpletuner.data.schema import data_backend_entry_problems

        problems += data_backend_entry_problems(values["data_backend_config"])
    if problems and path is None and not values["model_family"]:
        # No file and not even a family: most often train.sh/train.py was run
        # from outside the project folder.
        looked_for, _required = locate_config_file(env, cwd)
        problems.append(
            f"no config file was read: {looked_for} does not exist; run from your project folder "
            "(the one holding config/) or set CONFIG_PATH=path/to/config.json"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    return make_config(with_results_folder(with_flavour_model(values)), explicit, path, ignored)


def with_results_folder(values: dict[str, Any]) -> dict[str, Any]:
    """--hub_model_id names the results folder inside --output_dir (SimpleTuner's meaning).

    Done once here, so every part of the run (checkpoints, resume, weights, the
    model card) sees the same folder.
    """
    if not values.get("hub_model_id") or not values.get("output_dir"):
        return values
    name = str(values["hub_model_id"]).rstrip("/").split("/")[-1]
    output = Path(values["output_dir"])
    if output.name == name:  # already the results folder (a saved config read back)
        return values
    return {**values, "output_dir": str(output / name)}
