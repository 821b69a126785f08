"""Attaching a LyCORIS adapter (``--lora_type lycoris``) to a frozen denoiser.

LyCORIS wraps the forward of each targeted layer; the wrappers and their
weights live in a ``LycorisNetwork``.  That network is registered as a child
of the denoiser, so moving, wrapping (DDP) and train/eval switching of the
denoiser carry it along.  Its state dict is exactly what
``LycorisNetwork.save_weights`` writes and ``create_lycoris_from_weights``
reads, so checkpoints and the final file share one format.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch

from simpletuner.errors import ConfigError
from simpletuner.logs import quieted

logger = logging.getLogger(__name__)

# The child name the network is registered under inside the denoiser.
CHILD_NAME = "lycoris_network"
# LycorisNetwork keeps its preset in class attributes; they are put back after
# each build so one run's preset never leaks into another in the same process.
_PRESET_ATTRIBUTES = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP",
                      "NAME_ALGO_MAP", "LORA_PREFIX", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")


@contextmanager
def _preset_applied(preset: dict[str, Any]) -> Iterator[None]:
    from lycoris import LycorisNetwork

    saved = {name: getattr(LycorisNetwork, name) for name in _PRESET_ATTRIBUTES}
    try:
        LycorisNetwork.apply_preset({k: v for k, v in preset.items() if k != "enable_conv"})
        yield
    finally:
        for name, value in saved.items():
            setattr(LycorisNetwork, name, value)


def attach_lycoris(denoiser: torch.nn.Module, spec: dict[str, Any], source: str, family: Any = None) -> Any:
    """Wrap the denoiser's layers as ``spec`` (a checked lycoris_config) says.

    Returns the network; its parameters (fp32) are the only trainable ones.
    Each preset target that matches nothing in the denoiser is named in a warning.
    """
    from lycoris import create_lycoris

    denoiser.requires_grad_(False)
    options = {k: v for k, v in spec.items() if k not in ("multiplier", "linear_dim", "linear_alpha", "apply_preset")}
    preset = dict(spec.get("apply_preset") or {})
    # create_lycoris applies a built-in preset of its own after ours; the
    # built-ins differ only in enable_conv, so pick the one matching the file.
    builtin = "full" if preset.get("enable_conv", True) else "full-lin"
    # LyCORIS prints its progress to stdout at INFO; our own summary replaces it.
    with quieted("LyCORIS"), _preset_applied(preset):
        network = create_lycoris(
            denoiser,
            float(spec.get("multiplier", 1.0)),
            linear_dim=spec.get("linear_dim", 4),
            linear_alpha=spec.get("linear_alpha", 1),
            preset=builtin,
            warn_on_unmatched=False,
            **options,
        )
    if not network.loras:
        raise ConfigError(
            f"--lycoris_config={source}: matched no layer of the {type(denoiser).__name__}; check "
            "apply_preset.target_module / target_name against the model's module class names"
        )
    for message in unmatched_targets(denoiser, preset, family):
        logger.warning("--lycoris_config=%s: %s", source, message)
    with quieted("LyCORIS"):
        network.apply_to()
    device = next(denoiser.parameters()).device
    network.to(device=device, dtype=torch.float32)
    network.requires_grad_(True)
    denoiser.add_module(CHILD_NAME, network)
    counts = ", ".join(f"{count} {name}" for name, count in sorted(_module_counts(network).items()))
    logger.info("LyCORIS %s adapter on %d layers (%s)", spec["algo"], len(network.loras), counts)
    return network


def unmatched_targets(denoiser: torch.nn.Module, preset: dict[str, Any], family: Any = None) -> list[str]:
    """One line per preset target (module class name or name pattern) that matches nothing.

    Matching follows LyCORIS: class names exactly, names exactly or by
    ``re.match`` (``fnmatch`` with ``use_fnmatch``).  A preset written for
    several families (the shipped example) names each family's attention
    class; another family's class is not reported as long as the preset also
    names this family's own.
    """
    excluded = preset.get("exclude_name") or []
    matches = partial(_name_matches, bool(preset.get("use_fnmatch")))
    named = [(name, module) for name, module in denoiser.named_modules()
             if not (name and (name in excluded or any(matches(p, name) for p in excluded)))]
    present = {type(module).__name__ for _name, module in named}
    own = set(getattr(family, "attention_class_names", ()))
    others = _attention_classes_of_other_families(own) if own & set(preset.get("target_module") or []) else set()
    lines = []
    model = type(denoiser).__name__
    for target in dict.fromkeys([*(preset.get("target_module") or []), *(preset.get("module_algo_map") or {})]):
        if target not in present and target not in others:
            hint = f"; its attention class is {', '.join(sorted(own & present))}" if own & present else ""
            lines.append(f"target_module {target!r} matches no layer of the {model}{hint}")
    for pattern in dict.fromkeys([*(preset.get("target_name") or []), *(preset.get("name_algo_map") or {})]):
        if not any(name == pattern or matches(pattern, name) for name, _module in named):
            lines.append(f"target_name {pattern!r} matches no layer name of the {model}")
    return lines


def _name_matches(use_fnmatch: bool, pattern: str, name: str) -> bool:
    return fnmatch.fnmatch(name, pattern) if use_fnmatch else bool(re.match(pattern, name))


def _attention_classes_of_other_families(own: set[str]) -> set[str]:
    from simpletuner.families.registry import available_families, get_family

    return {name for family in available_families() for name in get_family(family).attention_class_names} - own


def _module_counts(network: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for module in network.loras:
        counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


@contextmanager
def lycoris_disabled(network: Any) -> Iterator[None]:
    """The base model's behaviour: every wrapper's contribution scaled by zero.

    Unwrapping and re-wrapping the layers instead would not be safe: the
    ``full`` algorithm folds the original weight into its own on wrapping.
    """
    with lycoris_multiplier(network, 0.0):
        yield


@contextmanager
def lycoris_multiplier(network: Any, multiplier: float) -> Iterator[None]:
    """Every wrapper's contribution scaled by ``multiplier`` inside; as before after."""
    previous = network.multiplier
    network.set_multiplier(multiplier)
    try:
        yield
    finally:
        network.set_multiplier(previous)


def lycoris_state(network: Any) -> dict[str, torch.Tensor]:
    """The network's weights under LyCORIS' own key names (what save_weights writes)."""
    return {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}


def save_lycoris(network: Any, file: Path, spec: dict[str, Any]) -> None:
    """LyCORIS' file format; the config travels in the header for reference."""
    from safetensors.torch import save_file

    save_file(lycoris_state(network), str(file), metadata={"lycoris_config": json.dumps(spec, sort_keys=True)})


def load_lycoris(network: Any, file: Path) -> None:
    from safetensors.torch import load_file

    result = network.load_state_dict(load_file(str(file)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{file}: does not match the adapter --lycoris_config describes "
            f"(missing {list(result.missing_keys)[:3]}, unexpected {list(result.unexpected_keys)[:3]}); "
            "resume with the lycoris_config the checkpoint was trained with"
        )
