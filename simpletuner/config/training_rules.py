"""Cross-option checks of the SimpleTuner training features (issue 16): sigma
draws, Flux guidance and LoRA targets, TF32.  Same contract as
:mod:`simpletuner.config.rules`, which runs them: each takes the merged values
(options with no effect already set aside) and returns one message naming the
options to change, or None.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

Values = Mapping[str, Any]

def one_sigma_draw(values: Values) -> Optional[str]:
    # Either replaces the --flow_weighting_scheme's draw (its loss weighting stays); both cannot.
    if values.get("flux_use_beta_schedule") and values.get("flux_use_uniform_schedule"):
        return ("--flux_use_beta_schedule and --flux_use_uniform_schedule both choose how sigmas are drawn; "
                "keep one of them")
    return None


def guidance_range(values: Values) -> Optional[str]:
    if values.get("flux_guidance_mode") != "random-range":
        return None
    low, high = values["flux_guidance_min"], values["flux_guidance_max"]
    if low > high:
        return f"--flux_guidance_min={low} is above --flux_guidance_max={high}; swap them"
    return None


def one_lora_target_list(values: Values) -> Optional[str]:
    preset = values.get("flux_lora_target", "all")
    if preset != "all" and values.get("lora_target_modules"):
        return (f"--flux_lora_target={preset} and --lora_target_modules both name the layers the LoRA trains; "
                "keep one of them")
    return None


def tf32_settings(values: Values) -> Optional[str]:
    if values.get("allow_tf32") and values.get("disable_tf32"):
        return "--allow_tf32 and --disable_tf32 contradict each other; keep one of them"
    return None


def fp16_supported(values: Values, hardware: Any = None) -> Optional[str]:
    """fp16 where accelerate can run it: on the CPU it neither autocasts to fp16 nor
    scales the loss (it makes no GradScaler there), so fp16 needs a GPU."""
    if values.get("mixed_precision") != "fp16":
        return None
    from simpletuner.quantisation.matrix import CPU, detect_hardware

    if (hardware or detect_hardware()).kind == CPU:
        return ("--mixed_precision=fp16 needs a GPU: on the CPU accelerate does no fp16 autocast or loss "
                "scaling; use --mixed_precision bf16 or no")
    return None


TRAINING_RULES: tuple[Callable[[Values], Optional[str]], ...] = (
    one_sigma_draw,
    guidance_range,
    one_lora_target_list,
    tf32_settings,
)
