"""Option checks for FSDP2 and DeepSpeed, run with the other cross-option rules (config/rules.py).

Import-light: torch is imported only to ask whether an accelerator is present.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

Values = Mapping[str, Any]


def sharding_fits(values: Values) -> Optional[str]:
    """What --fsdp_enable cannot be combined with yet, or a refused --fsdp_version."""
    from simpletuner.validation.prompts import validation_enabled

    if values.get("deepspeed_config") and values.get("fsdp_enable"):
        return "--deepspeed_config and --fsdp_enable both shard the model; choose one of them"
    if values.get("deepspeed_config") and not _accelerator_present():
        return ("--deepspeed_config needs a GPU (DeepSpeed does not train on the CPU); on this machine use "
                "--fsdp_enable instead, which shards the model with FSDP2")
    if not values.get("fsdp_enable"):
        return None
    if values["fsdp_version"] != 2:
        return (f"--fsdp_version {values['fsdp_version']} is not implemented yet (only FSDP2, torch's per-parameter "
                "fully_shard, is used); set --fsdp_version 2")
    combinations = (
        (values["lora_type"] == "lycoris" and values["model_type"] == "lora", "--lora_type lycoris",
         "use --lora_type standard"),
        (bool(values.get("use_ema")), "--use_ema", "remove --use_ema"),
        (bool(values.get("train_text_encoder")), "--train_text_encoder", "remove --train_text_encoder"),
        (values.get("base_model_precision", "no_change") != "no_change", "--base_model_precision",
         "shard an unquantised base (--base_model_precision no_change)"),
        (validation_enabled(values), "validation images",
         "remove the validation prompt options and validate the saved weights afterwards"),
        (bool(values.get("eval_dataset_id")), "--eval_dataset_id", "remove --eval_dataset_id"),
        # The fused Linear and the separate q/k/v weights share storage, which sharding would split apart.
        (bool(values.get("fused_qkv_projections")), "--fused_qkv_projections", "remove --fused_qkv_projections"),
    )
    for clash, what, fix in combinations:
        if clash:
            return f"--fsdp_enable with {what} is not implemented yet; {fix}"
    if (values.get("fsdp_cpu_ram_efficient_loading") and values["model_type"] == "lora"
            and values.get("lora_init_type") in ("olora", "pissa")):
        return (f"--fsdp_cpu_ram_efficient_loading with --lora_init_type {values['lora_init_type']}: that initialisation "
                "is computed from the base weights, which only the main process reads; use --lora_init_type default "
                "or gaussian, or remove --fsdp_cpu_ram_efficient_loading")
    if values.get("fsdp_cpu_offload") and not _accelerator_present():
        return ("--fsdp_cpu_offload moves weights between a GPU and CPU memory; on this machine without a GPU "
                "they are in CPU memory already: remove it")
    return None


def _accelerator_present() -> bool:
    import torch

    return torch.accelerator.is_available()
