"""Config-validation rules for --attention_mechanism and --fused_qkv_projections.

Kept beside the backend table rather than in ``config/rules.py`` because the
mechanism check reads the hardware, which the plain option rules never see.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from simpletuner.attention.backends import DEFAULT, check
from simpletuner.quantisation.matrix import Hardware, detect_hardware

# Why --fused_qkv_projections is refused with these options (also printed in QUANTISATION.md).
FUSED_WITH_LYCORIS_WHY = ("LyCORIS wraps and saves modules by their names, so its file would name the fused "
                          "projections, which the unfused base model does not have")
FUSED_WITH_QUANTISED_WHY = ("fusing concatenates the q, k and v weights, which quantised weight tensors do "
                            "not support")


def fused_qkv_fits(values: Mapping[str, Any]) -> Optional[str]:
    if not values.get("fused_qkv_projections"):
        return None
    if values["model_type"] == "lora" and values["lora_type"] == "lycoris":
        return (f"--fused_qkv_projections does not work with --lora_type lycoris: {FUSED_WITH_LYCORIS_WHY}; "
                "use --lora_type standard or drop --fused_qkv_projections")
    if values["base_model_precision"] != "no_change":
        return (f"--fused_qkv_projections does not work with --base_model_precision "
                f"{values['base_model_precision']}: {FUSED_WITH_QUANTISED_WHY}; drop one of the two")
    return None


def attention_supported(values: Mapping[str, Any], hardware: Optional[Hardware] = None) -> Optional[str]:
    """One line when --attention_mechanism cannot run for this run, else None."""
    name = values["attention_mechanism"]
    if name == DEFAULT:
        return None  # no torch import for the common case
    from simpletuner.families.registry import get_family

    family = get_family(values["model_family"])
    problem = check(
        name, hardware or detect_hardware(), dispatch=family.attention_dispatch, family=values["model_family"],
        half=values["mixed_precision"] in ("bf16", "fp16"),
        masked=bool(values.get("flux_attention_masked_training")) and family.attention_dispatch,
        fused=bool(values.get("fused_qkv_projections")),
    )
    if problem and name == "xformers" and values.get("enable_xformers_memory_efficient_attention"):
        problem += " (--enable_xformers_memory_efficient_attention asks for it)"
    return problem
