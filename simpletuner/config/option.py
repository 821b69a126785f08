"""The record that declares one option.

Every user-facing option is declared exactly once, as an :class:`Option` in
``simpletuner.config.options.OPTIONS``.  The argparse parser, the JSON/TOML
loaders, validation, ``documentation/OPTIONS.md`` and the configure wizard are
all derived from those records, so they cannot drift apart.

This module imports nothing heavy: ``train.py --help`` must not pay for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# Value kinds an option can have.  Kept as strings (not Python types) so the
# table reads like documentation and the docs generator can print them as-is.
KINDS = ("bool", "int", "float", "str", "path", "list")


@dataclass(frozen=True)
class Option:
    """One option of the trainer.

    Attributes:
        name: the flag without dashes, e.g. ``learning_rate``.
        kind: one of :data:`KINDS`.  ``list`` values are comma-separated
            strings on the CLI and may be JSON lists in config files.
        default: the value used when neither file nor CLI sets it.
        help: one or two sentences in our own words, shown by ``--help``.
        group: the section heading in ``--help`` and OPTIONS.md.
        choices: allowed values (for ``str``/``list`` kinds), or None.
        implemented: True when every value works.  False when only the
            default works: setting anything else fails validation with
            "not implemented yet".  A tuple names the choices that work
            (for options where some choices are done and others are not).
        secret: the value is redacted in printed configs, logs and saved files.
        minimum / maximum: inclusive numeric bounds, checked at validation.
        aliases: other accepted spellings of choices, mapped to the canonical
            choice (``centre`` -> ``center``).
        families: the model families the option means something for, or None
            for all.  Setting it for another family is an error, not a no-op.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: Optional[tuple] = None
    implemented: Any = True
    secret: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    aliases: Optional[dict] = None
    families: Optional[tuple] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")
        if isinstance(self.implemented, tuple) and self.choices:
            unknown = set(self.implemented) - set(self.choices)
            if unknown:
                raise ValueError(
                    f"option {self.name}: implemented choices {sorted(unknown)} are not choices"
                )

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def is_value_implemented(self, value: Any) -> bool:
        """Whether ``value`` is something this option can really do today."""
        if self.implemented is True:
            return True
        if value == self.default:
            return True
        if self.implemented is False:
            return False
        values = value if isinstance(value, (list, tuple)) else [value]
        return all(v in self.implemented for v in values)
