"""Options set to a value that has no effect in this configuration.

SimpleTuner users' configs routinely carry such options (``lora_rank`` beside
``lora_type: lycoris``, a flow-shift option on a family that is not trained by
flow matching), so refusing them would stop configs that run there.  Instead
each one is named once at start-up with the reason (``Option.families`` and
``Option.applies_when`` in the option table say when an option acts), and put
back to its default so that it really changes nothing downstream.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from simpletuner.config.options import OPTIONS

logger = logging.getLogger(__name__)


def _shown(option: Any, value: Any) -> str:
    if option.secret:
        return "***redacted***"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def no_effect_message(option: Any, value: Any, reason: str) -> str:
    """The one line that names an option set to a value with no effect, and why."""
    return f"{option.flag}={_shown(option, value)} has no effect: {reason}; ignoring it"


def set_aside_inert(values: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(``values`` with every inert option back at its default, one message per such option).

    An option can become inert because another one did (``--lycoris_config`` once
    ``--lora_type`` is set aside for a full fine-tune), so this repeats until
    nothing changes; each option is named once, with the first reason found.
    """
    current = dict(values)
    messages: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for option in OPTIONS:
            value = current[option.name]
            if option.name in messages or value == option.default:
                continue
            reason = option.inert_reason(current)
            if reason:
                messages[option.name] = no_effect_message(option, value, reason)
                current[option.name] = option.default
                changed = True
    return current, tuple(messages[option.name] for option in OPTIONS if option.name in messages)


def log_ignored_options(config: Any) -> None:
    """Name each option the run ignores, as a warning in the start-up output."""
    for message in getattr(config, "ignored", ()):
        logger.warning(message)
