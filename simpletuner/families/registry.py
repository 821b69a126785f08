"""Which module implements which model family.

Families are imported only when chosen, so start-up pays for one family's
dependencies, not all of them.  Adding a family means adding its module and
one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from simpletuner.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from simpletuner.families.base import ModelFamily

# family name -> "module:ClassName"
FAMILY_MODULES: dict[str, str] = {
    "sdxl": "simpletuner.families.sdxl:SDXLFamily",
}


def available_families() -> list[str]:
    return sorted(FAMILY_MODULES)


def get_family(name: str) -> "ModelFamily":
    """Import and instantiate the family called ``name``."""
    try:
        target = FAMILY_MODULES[name]
    except KeyError:
        raise ConfigError(
            f"--model_family={name!r} has no implementation; available: "
            + ", ".join(available_families())
        ) from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
