"""The record that declares one option.

Every user-facing option is declared exactly once, as an :class:`Option` in
``simpletuner.config.options.OPTIONS``.  The argparse parser, the JSON/TOML
loaders, validation, ``documentation/OPTIONS.md`` and the configure wizard are
all derived from those records, so they cannot drift apart.

This module imports nothing heavy: ``train.py --help`` must not pay for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

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
            for all.  Set for another family it has no effect, which the run
            says at start-up (see :mod:`simpletuner.config.inert`).
        applies_when: further :class:`AppliesWhen` conditions under which the
            option has an effect; when one is not met the run names the
            option and the condition's reason at start-up and ignores it.
        spellings: other names of the option (SimpleTuner's renamed
            spellings, ``checkpoint_step_interval`` for ``checkpointing_steps``),
            accepted on the command line and in config files and read as this
            option; ``--print_config`` shows the canonical name.
        refusal: why a not-implemented option is refused, shown with "not
            implemented yet" (for example that it belongs to a model family
            this trainer does not support).
        no_effect: why the option never changes anything here (a tuning knob
            of SimpleTuner's own machinery that this design does not have); a
            set value is named once at start-up and ignored, like an option
            whose ``applies_when`` is not met.
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
    applies_when: tuple["AppliesWhen", ...] = ()
    spellings: tuple[str, ...] = ()
    refusal: Optional[str] = None
    no_effect: Optional[str] = None

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

    def inert_reason(self, values: Mapping[str, Any]) -> Optional[str]:
        """Why this option has no effect with these ``values``, or None when it has one."""
        if self.no_effect:
            return self.no_effect
        family = values.get("model_family")
        if self.families and family and family not in self.families:
            return f"only --model_family {', '.join(self.families)} use{'s' if len(self.families) == 1 else ''} it, not {family}"
        for condition in self.applies_when:
            if not condition.met(values):
                return condition.reason.format(**values)
        return None

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


@dataclass(frozen=True)
class AppliesWhen:
    """A condition on another option under which an option has an effect.

    The option acts when ``option``'s value is one of ``values`` (or, with
    ``unless``, is none of them).  ``reason`` says why it has no effect
    otherwise; it may name other options' values as ``{name}``.
    """

    option: str
    values: tuple
    reason: str
    unless: bool = False

    def met(self, values: Mapping[str, Any]) -> bool:
        return (values.get(self.option) in self.values) != self.unless
