"""Bytes per weight and per optimizer state, by option value.

``quantised_weight_bytes`` is the one place the estimate depends on
quantisation: bytes per weight parameter of a quantised Linear layer,
scales included.  The quantisation package owns the authoritative figure;
this table mirrors the formats: int8/fp8 hold one byte per weight plus a
per-row scale; int4/nf4 half a byte plus a scale (and for quanto a shift)
per group of 128 (bnb: 64) weights; int2 a quarter byte plus the same.
"""

from __future__ import annotations

from typing import Optional

_GROUP_SCALES_128 = 4 / 128  # bf16 scale + bf16 shift per group of 128
QUANTISED_WEIGHT_BYTES: dict[str, float] = {
    "int8-quanto": 1.0,
    "fp8-quanto": 1.0,
    "fp8uz-quanto": 1.0,
    "int8-torchao": 1.0,
    "fp8-torchao": 1.0,
    "int4-quanto": 0.5 + _GROUP_SCALES_128,
    "int2-quanto": 0.25 + _GROUP_SCALES_128,
    "nf4-bnb": 0.5 + 4 / 64,  # an fp32 absmax per block of 64
}


def quantised_weight_bytes(base_model_precision: str) -> Optional[float]:
    """Bytes per quantised Linear weight parameter; None for no_change."""
    return QUANTISED_WEIGHT_BYTES.get(base_model_precision)


def optimizer_state_bytes(optimizer: str) -> float:
    """Bytes of optimizer state per fp32 trained parameter.

    Adam-style optimizers keep two moments; Lion and SGD one; Prodigy four
    (moments, s, initial weights); Adan, Ranger and AdEMAMix three.  8-bit
    states take a byte each, 4-bit half a byte, fp8 a byte.
    """
    name = optimizer.removesuffix("-paged")
    states = 2
    if any(key in name for key in ("lion", "sgd", "adagrad")):
        states = 1
    elif "prodigy" in name:
        states = 4
    elif any(key in name for key in ("adan", "ranger", "ademamix")):
        states = 3
    if "8bit" in name or "fp8" in name:
        per_state = 1.0
    elif "4bit" in name:
        per_state = 0.5
    else:
        per_state = 4.0
    return states * per_state
