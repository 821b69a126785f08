"""--model_flavour: a family's named variants, each picking its base model.

Each family declares ``flavours`` (SimpleTuner's names -> Hub ids; the first
is the default) in its own module.  Here they become the run's
``--pretrained_model_name_or_path`` when none is given, and the source of the
configs (tokenizers, scheduler, component configs) that a single-file
checkpoint lacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

logger = logging.getLogger("simpletuner")

# What diffusers' from_single_file reads without pickle (safetensors; .sft is Flux's spelling).
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")


def is_single_file(path: Optional[str]) -> bool:
    """``path`` names a single-file checkpoint (a file, not a model folder or Hub id)."""
    return bool(path) and Path(str(path)).expanduser().is_file()


def family_flavours(family_name: Optional[str]) -> dict[str, str]:
    from simpletuner.families.registry import available_families, get_family

    if not family_name or family_name not in available_families():
        return {}
    return dict(get_family(family_name).flavours)


def flavour_problem(values: Mapping[str, Any]) -> Optional[str]:
    """A --model_flavour the family does not have, in one line listing those it has."""
    flavour = values.get("model_flavour")
    flavours = family_flavours(values.get("model_family"))
    if not flavour or not flavours or flavour in flavours:
        return None
    return (f"--model_flavour={flavour} is not a flavour of --model_family={values['model_family']}; "
            f"choose one of: {', '.join(flavours)}")


def with_flavour_model(values: dict[str, Any]) -> dict[str, Any]:
    """--model_flavour's Hub id as --pretrained_model_name_or_path when none is given.

    An explicit path wins; a warning names the disagreement, except for a
    single-file checkpoint, for which the flavour names where its configs come from.
    """
    flavour = values.get("model_flavour")
    flavours = family_flavours(values.get("model_family"))
    if not flavour or flavour not in flavours:
        return values
    wanted, given = flavours[flavour], values.get("pretrained_model_name_or_path")
    if not given:
        return {**values, "pretrained_model_name_or_path": wanted}
    if given != wanted and not is_single_file(given):
        logger.warning("--pretrained_model_name_or_path=%s is used; --model_flavour=%s would pick %s",
                       given, flavour, wanted)
    return values


def single_file_config_source(config: Any, family: Any) -> str:
    """Where a single-file checkpoint's configs come from: --single_file_config,
    else the --model_flavour's (or the family's default flavour's) Hub id."""
    explicit = getattr(config, "single_file_config", None)
    if explicit:
        return str(explicit)
    flavours = dict(getattr(family, "flavours", {}) or {})
    flavour = getattr(config, "model_flavour", None)
    if flavour in flavours:
        return flavours[flavour]
    if flavours:
        return next(iter(flavours.values()))
    from simpletuner.errors import ConfigError

    raise ConfigError(f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}: a single-file "
                      "checkpoint needs --single_file_config (a diffusers model folder of the same family)")
