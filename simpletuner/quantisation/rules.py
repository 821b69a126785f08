"""The config-validation rule that asks the support matrix about a run.

Kept beside the matrix rather than in ``config/rules.py`` because it also
reads the environment (TRAINING_DYNAMO_BACKEND, the process count) and the
hardware, which the plain option rules never see.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from simpletuner.quantisation.matrix import Combination, Hardware, check, detect_hardware
from simpletuner.quantisation.precisions import NO_CHANGE

TEXT_ENCODER_SLOTS = (1, 2, 3, 4)


def process_count(env: Mapping[str, str]) -> int:
    """Processes the run trains with: the launcher's WORLD_SIZE, else train.sh's TRAINING_NUM_PROCESSES."""
    for name in ("WORLD_SIZE", "TRAINING_NUM_PROCESSES"):
        raw = str(env.get(name, "")).strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return 1


def combination_of(values: Mapping[str, Any], env: Mapping[str, str]) -> Combination:
    algo = None
    if values["model_type"] == "lora" and values["lora_type"] == "lycoris" and values.get("lycoris_config"):
        from simpletuner.training.lycoris_config import read_lycoris_config

        algo = str(read_lycoris_config(values["lycoris_config"])["algo"]).lower()
    dynamo = str(env.get("TRAINING_DYNAMO_BACKEND", "")).strip().lower() or None
    return Combination(
        precision=values["base_model_precision"], model_type=values["model_type"], lora_type=values["lora_type"],
        lycoris_algo=algo, lora_init_type=values["lora_init_type"], optimizer=values["optimizer"],
        dynamo_backend=dynamo, num_processes=process_count(env),
        quantize_activations=values["quantize_activations"],
    )


def quantisation_supported(
    values: Mapping[str, Any], env: Mapping[str, str], hardware: Optional[Hardware] = None
) -> Optional[str]:
    """One line per refused precision choice, or None when every choice can work here."""
    if values.get("text_encoder_4_precision", NO_CHANGE) != NO_CHANGE:
        return "--text_encoder_4_precision: no model family here has a fourth text encoder; remove it"
    encoders = {slot: values.get(f"text_encoder_{slot}_precision", NO_CHANGE) for slot in TEXT_ENCODER_SLOTS}
    if values["base_model_precision"] == NO_CHANGE and not values["quantize_activations"] \
            and all(p == NO_CHANGE for p in encoders.values()):
        return None  # nothing to ask, and no torch import for the common case
    hardware = hardware or detect_hardware()
    problems = [check(combination_of(values, env), hardware)]
    for slot, precision in encoders.items():
        # Text encoders only encode captions for the cache: no adapter, no
        # compilation, no gradients; only the hardware can rule them out.
        problems.append(check(Combination(precision), hardware, option=f"--text_encoder_{slot}_precision"))
    return "\n".join(p for p in problems if p) or None
