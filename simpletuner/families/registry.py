"""Which module implements which model family.

A family is the module ``simpletuner/families/<name>.py`` exposing
``FAMILY_CLASS``.  Families are imported only when chosen, so start-up pays
for one family's dependencies, not all of them; looking up which exist uses
``importlib.util.find_spec`` and imports nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from simpletuner.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from simpletuner.families.base import ModelFamily

# Every family of the spec, in the order --help lists them.
FAMILY_NAMES = ("sdxl", "legacy", "sd3", "flux", "pixart_sigma", "kolors")


def _module_name(name: str) -> str:
    return f"simpletuner.families.{name}"


def available_families() -> tuple[str, ...]:
    """Families whose module exists, i.e. that can train today."""
    return tuple(name for name in FAMILY_NAMES if importlib.util.find_spec(_module_name(name)) is not None)


def family_for_pipeline(pipeline_class_name: Any) -> "str | None":
    """The family whose pipeline class this is (a model_index.json ``_class_name``), or None."""
    for name in available_families():
        if get_family(name).pipeline_class_name == pipeline_class_name:
            return name
    return None


def get_family(name: str, config: Any = None) -> "ModelFamily":
    """Import and instantiate the family called ``name`` (for the run ``config``)."""
    if name not in available_families():
        raise ConfigError(
            f"--model_family={name!r} has no implementation; available: " + ", ".join(available_families())
        )
    return importlib.import_module(_module_name(name)).FAMILY_CLASS(config)
