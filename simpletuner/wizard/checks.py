"""The wizard's checks of single answers and what it detects about this machine.

Each check returns None for an accepted answer or one line saying why not,
in the trainer's own words where the trainer has a rule (the support matrix,
the fp16 refusal, the base-model folder check).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional

from simpletuner.errors import UserError
from simpletuner.wizard.questions import offered_choices
from simpletuner.wizard.terminal import Terminal

# A suggested base model per family, offered as the default answer when the family has no flavours.
SUGGESTED_MODELS = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "legacy": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd3": "stabilityai/stable-diffusion-3.5-medium",
    "flux": "black-forest-labs/FLUX.1-dev",
    "pixart_sigma": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "kolors": "Kwai-Kolors/Kolors-diffusers",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def not_a_file(value: Any) -> Optional[str]:
    if value and Path(value).exists() and not Path(value).is_dir():
        return f"{value} is a file; give a folder"
    return None


def not_none_with_trackers(value: Any) -> Optional[str]:
    if "none" in value and len(value) > 1:
        return "'none' cannot be combined with trackers"
    return None


def base_model_problem(value: str, family_name: str) -> Optional[str]:
    """A local folder must be a model folder of the family; anything else must look like a Hub id."""
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    if Path(value).expanduser().exists() or value.startswith((".", "/", "~")):
        try:
            ModelSource(base=value).check(get_family(family_name))
        except UserError as error:
            return str(error)
        return None
    if _HUB_ID.fullmatch(value):
        return None  # checked (and downloaded) when training starts; nothing is fetched here
    return f"{value} is neither a folder here nor a Hub id (owner/name); give an existing folder or a Hub id"


def hub_model_id_problem(value: Any) -> Optional[str]:
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", str(value)):
        return None
    return "give a repository name such as me/my-lora (letters, digits, - _ .)"


def whole_pixels(value: Any) -> Optional[str]:
    if not float(value).is_integer() or value < 8:
        return "give a whole number of pixels, 8 or more (for example 1024)"
    return None


def runs_here(value: Any) -> Optional[str]:
    """The support matrix's refusal of a LoRA on this machine at that precision."""
    from simpletuner.quantisation.matrix import Combination, check, detect_hardware

    problem = check(Combination(value), detect_hardware())
    return problem.split(": ", 1)[1] if problem else None


def mixed_precision_runs_here(value: Any) -> Optional[str]:
    """The trainer's own refusal of fp16 on a machine without a GPU."""
    from simpletuner.config.training_rules import fp16_supported

    problem = fp16_supported({"mixed_precision": value})
    return problem.removeprefix("--mixed_precision=") if problem else None


def runnable(name: str, check: Callable[[Any], Optional[str]]) -> list:
    """The option's implemented choices that ``check`` accepts on this machine."""
    from simpletuner.config.options import OPTIONS_BY_NAME

    return [choice for choice in offered_choices(OPTIONS_BY_NAME[name]) if check(choice) is None]


def optimizer_runs_here(answers: dict[str, Any], value: Any) -> Optional[str]:
    """The trainer's refusal of ``value`` with the answers so far (a CUDA-only optimizer on a CPU, ...)."""
    from simpletuner.wizard.proposal import trial_config

    try:
        with trial_config(answers, {"optimizer": value}):
            return None
    except UserError as error:
        return str(error).splitlines()[0]


def parse_length(raw: str) -> Optional[tuple[int, int]]:
    """"1000", "1000 steps" -> (1000, 0); "10 epochs" -> (0, 10); None when it is neither."""
    found = re.fullmatch(r"(\d+)\s*(steps?|epochs?)?", raw.strip().lower())
    if not found or int(found.group(1)) < 1:
        return None
    count = int(found.group(1))
    return (0, count) if (found.group(2) or "").startswith("epoch") else (count, 0)


def detected_gpu_memory() -> Optional[tuple[str, int]]:
    """(name, total bytes) of the first GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return properties.name, properties.total_memory


def detected_gpus() -> int:
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def available_ram() -> int:
    import psutil

    return psutil.virtual_memory().available


def ask_gib(term: Terminal, label: str, default: float) -> int:
    """Memory in GiB, returned in bytes."""
    shown = f"{default:.0f}" if default >= 10 else f"{default:.1f}"
    while True:
        raw = term.ask(label, (), shown).strip() or shown
        try:
            value = float(raw.lower().removesuffix("gib").removesuffix("gb").strip())
        except ValueError:
            value = -1.0
        if value > 0:
            return int(value * 2**30)
        term.say("  give the memory in GiB, a number above 0 (for example 24)")
