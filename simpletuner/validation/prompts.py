"""Which prompts a validation renders, at which sizes: read from the options alone.

Import-light (no torch): the option rules call these checks while loading the
config, so a bad ``--validation_resolution`` or ``--user_prompt_library`` stops
the run before anything loads.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.errors import ConfigError
from simpletuner.validation.library import BUILTIN_PROMPTS

UNCONDITIONAL = "unconditional"
_SIZE = re.compile(r"^\s*(\d+)\s*(?:x\s*(\d+))?\s*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ValidationPrompt:
    shortname: str  # names the files; letters, digits, _ and - only
    prompt: str
    # The image dataset whose text-embed cache holds the prompt; None: the one
    # validation prompts are cached into (the first image dataset's).
    dataset_id: Optional[str] = None


def parse_resolutions(text: str, multiple: int = 8) -> list[tuple[int, int]]:
    """``"1024, 1216x832"`` -> ``[(1024, 1024), (1216, 832)]`` as (width, height).

    Raises ValueError with the reason; sizes must be multiples of ``multiple``
    (what the family's pipeline can render without resizing).
    """
    sizes = []
    for item in str(text).split(","):
        match = _SIZE.match(item)
        if not match:
            raise ValueError(f"{item.strip()!r} is not a size like 1024 or WIDTHxHEIGHT like 1216x832")
        width = int(match.group(1))
        height = int(match.group(2) or width)
        if width <= 0 or height <= 0 or width % multiple or height % multiple:
            raise ValueError(f"{item.strip()!r}: width and height must be positive multiples of {multiple}")
        sizes.append((width, height))
    return sizes


def size_multiple(model_family: Optional[str]) -> int:
    """What each side must divide by: 8 (the VAE), 16 where the model also packs 2x2 patches."""
    from simpletuner.config.options.common import FLOW_FAMILIES  # the patched-latent families, named once

    return 16 if model_family in FLOW_FAMILIES else 8


def safe_shortname(name: str) -> str:
    return _UNSAFE.sub("_", name.strip()).strip("_") or "prompt"


def read_prompt_library(path: str | Path, option: str = "--user_prompt_library") -> dict[str, str]:
    """``{"shortname": "prompt", ...}`` from a JSON file; ConfigError naming ``option`` otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{option}={path}: no such file; point it at a JSON file of shortname -> prompt")
    try:
        library = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{option}={path}: not valid JSON ({error})") from None
    if not isinstance(library, dict) or not library:
        raise ConfigError(f"{option}={path}: must be a JSON object mapping shortnames to prompts, "
                          'like {"red_car": "a red car on a beach"}')
    for name, prompt in library.items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{option}={path}: the value of {name!r} must be a non-empty prompt string")
    return library


def validation_enabled(values: Mapping[str, Any]) -> bool:
    """Validation runs when some option gives at least one prompt."""
    return bool(values.get("validation_prompt") or values.get("user_prompt_library")
                or values.get("validation_prompt_library") or values.get("validation_using_datasets"))


def configured_prompts(values: Mapping[str, Any]) -> list[ValidationPrompt]:
    """The prompts the options name, in order; shortnames made unique and file-safe."""
    named: list[tuple[str, str]] = []
    if values.get("validation_prompt"):
        named.append(("validation", values["validation_prompt"]))
    if values.get("user_prompt_library"):
        named.extend(read_prompt_library(values["user_prompt_library"]).items())
    if values.get("validation_prompt_library"):
        named.extend(BUILTIN_PROMPTS.items())
    return _unique([ValidationPrompt(name, prompt) for name, prompt in named])


def dataset_prompts(captions_by_dataset: Mapping[str, Sequence[str]], seed: int) -> list[ValidationPrompt]:
    """One caption per dataset, drawn from ``seed`` (the same on every rank and every resume)."""
    chosen = []
    for dataset_id, captions in captions_by_dataset.items():
        if captions:
            index = random.Random(f"{seed}:{dataset_id}").randrange(len(captions))
            chosen.append(ValidationPrompt(dataset_id, captions[index], dataset_id=dataset_id))
    return chosen


def all_prompts(values: Mapping[str, Any], captions_by_dataset: Mapping[str, Sequence[str]],
                seed: int) -> list[ValidationPrompt]:
    """Every row of a validation: configured prompts, dataset captions, then the unconditional one."""
    prompts = configured_prompts(values)
    if values.get("validation_using_datasets"):
        prompts += dataset_prompts(captions_by_dataset, seed)
    if prompts and not values.get("validation_disable_unconditional"):
        prompts.append(ValidationPrompt(UNCONDITIONAL, ""))
    return _unique(prompts)


def _unique(prompts: list[ValidationPrompt]) -> list[ValidationPrompt]:
    seen: set[str] = set()
    result = []
    for prompt in prompts:
        name = base = safe_shortname(prompt.shortname)
        counter = 2
        while name in seen:
            name, counter = f"{base}-{counter}", counter + 1
        seen.add(name)
        result.append(ValidationPrompt(name, prompt.prompt, prompt.dataset_id))
    return result
