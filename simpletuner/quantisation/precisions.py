"""Every ``--base_model_precision`` choice: its backend and its storage cost.

Import-light (no torch): the option table, the support matrix and the memory
estimator read this module before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from simpletuner.errors import ConfigError

NO_CHANGE = "no_change"


@dataclass(frozen=True)
class Precision:
    """One quantised weight format.

    Attributes:
        name: the option value, e.g. ``int8-quanto``.
        backend: library that quantises: ``quanto``, ``torchao`` or ``bnb``;
            ``none`` for ``no_change``.
        weight_bits: bits one quantised weight element takes.
        group_size: how many weights share one scale (and zero point);
            None when a whole output row shares it (per-channel scales cost
            next to nothing per parameter).
        scale_bytes: bytes of scale (+ zero point) stored per group.
        description: one line for the generated documentation.
        step_workspace: bytes per weight of one quantised layer that a training
            step holds while that layer runs forward or backward (the backend
            dequantises the frozen weight, with its temporaries); the step's
            peak has it once, for the largest quantised layer.  Nothing is
            kept per layer for backward: quanto keeps the quantised weight and
            dequantises in backward, and torchao's layers are given the same
            backward (``quantisation/backward.py``).
    """

    name: str
    backend: str
    weight_bits: float
    group_size: Optional[int]
    scale_bytes: float
    description: str
    step_workspace: float = 0.0

    @property
    def quantised(self) -> bool:
        return self.backend != "none"

    @property
    def quantises_convolutions(self) -> bool:
        # quanto's quantize() swaps Conv2d for QConv2d as well; torchao's filter
        # (quantisation/apply.py) and bitsandbytes take Linear layers only.
        return self.backend == "quanto"


# Group sizes and scale widths are those the libraries use by default:
# optimum-quanto packs int4/int2 in groups of 128 with a bf16 scale and a bf16
# shift (``optimum/quanto/nn/qmodule.py``) and keeps one scale per output row
# for 8-bit types; torchao's int8/float8 weight-only configs scale per row;
# bitsandbytes nf4 (QLoRA, Dettmers et al. 2023, "double quantisation") keeps
# an 8-bit absmax per 64 weights plus an fp32 constant per 256 absmaxes.
#
# Step workspaces were measured on the CPU (torch 2.13, optimum-quanto 0.2.7,
# torchao 0.18), one PEFT LoRA step through a Flux MLP layer (the worse of 3072->12288 and back), with glibc
# returning every large free to the system so the peak is what was live; they
# are pinned by tests/test_quantisation_workspace.py.  quanto int8/fp8
# dequantise through fp32 in backward (4 bytes a weight); int4 unpacks
# tinygemm's layout (11); int2 dequantises in forward and backward (5);
# torchao int8 casts its int8 rows to bf16 (2), its fp8 forward dequantises
# through fp32 (10).  nf4-bnb needs CUDA, so its 2 (bitsandbytes dequantises
# to the compute dtype) is read from its code, not measured here.
PRECISIONS: tuple[Precision, ...] = (
    Precision(NO_CHANGE, "none", 16, None, 0.0,
              "Weights stay as loaded (in --base_model_default_dtype)."),
    Precision("int8-quanto", "quanto", 8, None, 0.0,
              "optimum-quanto int8 weights, one scale per output row.", step_workspace=4.0),
    Precision("int4-quanto", "quanto", 4, 128, 4.0,
              "optimum-quanto int4 weights in groups of 128 with a scale and shift.", step_workspace=11.25),
    Precision("int2-quanto", "quanto", 2, 128, 4.0,
              "optimum-quanto int2 weights in groups of 128 with a scale and shift.", step_workspace=5.0),
    Precision("fp8-quanto", "quanto", 8, None, 0.0,
              "optimum-quanto float8 (e4m3fn) weights, one scale per output row.", step_workspace=4.0),
    Precision("fp8uz-quanto", "quanto", 8, None, 0.0,
              "optimum-quanto float8 (e4m3fnuz, the AMD layout) weights, one scale per output row.", step_workspace=4.0),
    Precision("int8-torchao", "torchao", 8, None, 0.0,
              "torchao int8 weight-only quantisation, one scale per output row.", step_workspace=2.0),
    Precision("fp8-torchao", "torchao", 8, None, 0.0,
              "torchao float8 weight-only quantisation, one scale per output row.", step_workspace=10.0),
    Precision("nf4-bnb", "bnb", 4, 64, 1.0 + 4.0 / 256,
              "bitsandbytes 4-bit NormalFloat with double quantisation (the QLoRA recipe).", step_workspace=2.0),
)

PRECISIONS_BY_NAME: dict[str, Precision] = {p.name: p for p in PRECISIONS}
PRECISION_NAMES: tuple[str, ...] = tuple(p.name for p in PRECISIONS)


def get_precision(name: str, option: str = "--base_model_precision") -> Precision:
    """The record for ``name``; a one-line :class:`ConfigError` for anything else."""
    try:
        return PRECISIONS_BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"{option}={name!r} is not a precision; choose one of: " + ", ".join(PRECISION_NAMES)
        ) from None


def bytes_per_parameter(name: str, *, unquantised_bytes: float = 2.0, include_scales: bool = True) -> float:
    """Bytes one weight of a quantised Linear takes under precision ``name``.

    int8/fp8 -> 1, int4 -> 0.5 (+ scales), int2 -> 0.25 (+ scales), nf4 -> 0.5
    (+ scales).  ``no_change`` returns ``unquantised_bytes`` (the dtype the base
    is kept in: 2 for bf16, 4 for fp32).  Per-row scales are counted as zero;
    grouped scales add ``scale_bytes / group_size`` unless ``include_scales``
    is False.  Biases, norms and the modules a family keeps unquantised are
    not covered: they stay at ``unquantised_bytes``.
    """
    precision = get_precision(name)
    if not precision.quantised:
        return float(unquantised_bytes)
    value = precision.weight_bits / 8
    if include_scales and precision.group_size:
        value += precision.scale_bytes / precision.group_size
    return value
