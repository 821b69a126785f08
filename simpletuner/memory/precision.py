"""Bytes per weight and per optimizer state, by option value.

``quantised_weight_bytes`` and ``dequantised_layer_bytes`` are the places the
estimate depends on quantisation; the figures come from the quantisation
package's record of each format (``quantisation.precisions``), so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Optional

from simpletuner.quantisation.precisions import NO_CHANGE, bytes_per_parameter, get_precision


def quantised_weight_bytes(base_model_precision: str) -> Optional[float]:
    """Bytes per quantised Linear weight parameter, scales included; None for no_change."""
    if base_model_precision == NO_CHANGE:
        return None
    return bytes_per_parameter(base_model_precision)


def dequantised_layer_bytes(base_model_precision: str) -> float:
    """Bytes per weight of the one quantised layer a step dequantises at a time (0 for no_change)."""
    return get_precision(base_model_precision).step_workspace


def optimizer_state_bytes(optimizer: str, parameter_bytes: int = 4) -> float:
    """Bytes of optimizer state per trained parameter of ``parameter_bytes`` (fp32 unless told).

    Adam-style optimizers keep two moments; Lion and SGD one; Prodigy four
    (moments, s, initial weights); Adan, Ranger and AdEMAMix three.  8-bit
    states take a byte each, 4-bit half a byte, fp8 a byte; full-width states
    take the parameter's width, and torch-optimi adds a Kahan-summation buffer
    of that width for 16-bit parameters (a full fine-tune of bf16 text encoders).
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
        per_state = float(parameter_bytes)
        if parameter_bytes < 4 and (name == "adamw_bf16" or name.startswith("optimi-")):
            states += 1
    return states * per_state
