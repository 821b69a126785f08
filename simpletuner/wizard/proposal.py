"""Settings that fit the user's memory with a margin, found with the memory estimator.

From the most comfortable settings to the most frugal, the first that fits
is proposed: the family's own resolution before smaller ones, then gradient
checkpointing, then an 8-bit base model (where the support matrix allows it
on this machine), then a lighter optimizer; once one fits, the batch grows
while it still fits.  Every candidate is a config the trainer's own loader
accepts, and the estimate is the one train.py checks before loading.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from simpletuner.config.options import OPTIONS_BY_NAME
from simpletuner.errors import UserError

MARGIN = 0.85  # propose what needs at most this share of the memory
GIB = 2**30
RESOLUTIONS = (1024, 768, 512)
BATCHES = (2, 4)
# Each step frees memory at some cost: slower steps, a quantised base, a one-state optimizer.
FRUGALITY = (
    {},
    {"gradient_checkpointing": True},
    {"gradient_checkpointing": True, "base_model_precision": "int8-quanto"},
    {"gradient_checkpointing": True, "base_model_precision": "int8-quanto", "optimizer": "optimi-lion"},
)


@dataclass
class Proposal:
    values: dict[str, Any]  # option name -> proposed value
    needed: Optional[int] = None  # bytes the estimate says the proposal needs (None: no estimate)
    notes: list[str] = field(default_factory=list)


def default_precision(on_gpu: bool) -> str:
    """bf16 where it runs; fp16 only on a GPU without bf16 (the trainer refuses fp16 on a CPU)."""
    if on_gpu:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return OPTIONS_BY_NAME["mixed_precision"].default


def propose(answers: dict[str, Any], memory_bytes: int, on_gpu: bool) -> Proposal:
    """The first candidate that fits ``memory_bytes`` with the margin; the most frugal one when none does."""
    from simpletuner.families.registry import get_family
    from simpletuner.logs import quiet_libraries

    quiet_libraries()  # diffusers' remarks on the meta-device model are not for the user
    family = get_family(answers["model_family"])
    base = {"mixed_precision": default_precision(on_gpu), "base_model_precision": "no_change",
            "gradient_checkpointing": False, "optimizer": OPTIONS_BY_NAME["optimizer"].default,
            "train_batch_size": 1, "use_ema": False}
    budget = int(memory_bytes * MARGIN)
    tried: Optional[tuple[dict, int]] = None
    for values in _candidates(base, family.default_resolution):
        needed = estimate_needed(answers, values, on_gpu)
        if needed == "refused":
            continue
        if needed is None:
            return Proposal({**base, "resolution": family.default_resolution},
                            notes=["no memory estimate: the model's config and safetensors files are not on "
                                   "this machine (download it first for a proposal that fits); proposing defaults"])
        tried = (values, needed)
        if needed <= budget:
            return _grown(answers, values, needed, budget, on_gpu)
    values, needed = tried if tried else ({**base, "resolution": family.default_resolution}, None)
    from simpletuner.memory.report import size

    return Proposal(values, needed, [f"nothing tried fits {size(memory_bytes)} with a margin; these are "
                                     "the most frugal settings (the run may not fit)"])


def _candidates(base: dict[str, Any], native: int) -> Iterator[dict[str, Any]]:
    sizes = [native] + [size for size in RESOLUTIONS if size < native]
    for resolution in sizes:
        for frugal in FRUGALITY:
            yield {**base, **frugal, "resolution": resolution}


def _grown(answers: dict[str, Any], values: dict[str, Any], needed: int, budget: int, on_gpu: bool) -> Proposal:
    for batch in BATCHES:
        larger = {**values, "train_batch_size": batch}
        more = estimate_needed(answers, larger, on_gpu)
        if not isinstance(more, int) or more > budget:
            break
        values, needed = larger, more
    return Proposal(values, needed)


def estimate_needed(answers: dict[str, Any], values: dict[str, Any], on_gpu: bool) -> Any:
    """Bytes the run needs with ``values``; None without the model's files; "refused" when the
    trainer would refuse the combination here (the support matrix, an optimizer this machine lacks)."""
    import torch

    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.memory.report import estimate_for_run, required_memory

    try:
        with trial_config(answers, values) as config:
            family = get_family(config.model_family, config)
            source = ModelSource.from_config(config, family)
            resolution = int(values["resolution"])
            estimate = estimate_for_run(config, family, source, (resolution, resolution))
    except UserError:
        return "refused"
    if estimate is None:
        return None
    return required_memory(estimate, torch.device("cuda" if on_gpu else "cpu"))


@contextmanager
def trial_config(answers: dict[str, Any], values: dict[str, Any]) -> Iterator[Any]:
    """The config train.py would build from the answers so far plus ``values``, its files in a
    scratch folder for as long as the block runs (nothing of the user's is written)."""
    from simpletuner.config.loader import load_config

    merged = {name: value for name, value in {**answers, **values}.items()
              if name in OPTIONS_BY_NAME and value is not None and name != "data_backend_config"}
    with tempfile.TemporaryDirectory(prefix="wizard-") as scratch:
        if answers.get("lycoris_spec"):
            spec_file = Path(scratch) / "lycoris_config.json"
            spec_file.write_text(json.dumps(answers["lycoris_spec"]), encoding="utf-8")
            merged["lycoris_config"] = str(spec_file)
        merged["data_backend_config"] = str(Path(scratch) / "unused.json")
        config_file = Path(scratch) / "config.json"
        config_file.write_text(json.dumps({f"--{k}": _json(v) for k, v in merged.items()}), encoding="utf-8")
        yield load_config([], env={"CONFIG_PATH": str(config_file)})


def _json(value: Any) -> Any:
    return ",".join(value) if isinstance(value, list) else value
