"""SimpleTuner's ways of saying what our options say, applied once values are merged.

The option table maps each other *name* of an option to it (``Option.spellings``,
read by :mod:`simpletuner.config.sources`).  What remains here is what a name
alone cannot express:

* messages about an option name the spelling the user wrote
  (``--flow_schedule_shift (--flow_shift here)``), not only ours;
* ``offset_noise``: SimpleTuner v1.x switched the noise offset on with this
  flag and took its strength from ``noise_offset`` (default 0.1); here a
  non-zero ``noise_offset`` alone turns it on;
* ``enable_xformers_memory_efficient_attention``: SimpleTuner v1.x's switch
  for what ``--attention_mechanism xformers`` says here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

# SimpleTuner v1.x's --noise_offset default: the strength --offset_noise alone gives.
SIMPLETUNER_NOISE_OFFSET = 0.1


def respell(messages: Iterable[str], spelled: Mapping[str, str]) -> list[str]:
    """``messages`` with each option written another way named as the user wrote it."""
    if not spelled:
        return list(messages)
    names = "|".join(re.escape(name) for name in spelled)
    pattern = re.compile(r"--(" + names + r")(?![A-Za-z0-9_])(=\S*)?")
    return [pattern.sub(lambda m: f"--{spelled[m.group(1)]}{m.group(2) or ''} (--{m.group(1)} here)", message)
            for message in messages]


def apply_simpletuner_meanings(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with SimpleTuner-only switches turned into the options that do the work."""
    resolved = dict(values)
    if resolved.get("offset_noise") and not resolved.get("noise_offset"):
        resolved["noise_offset"] = SIMPLETUNER_NOISE_OFFSET
    if resolved.get("enable_xformers_memory_efficient_attention") and \
            resolved.get("attention_mechanism", "diffusers") == "diffusers":
        resolved["attention_mechanism"] = "xformers"
    return resolved
