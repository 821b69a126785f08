"""Options: loRA and LyCORIS adapters."""

from __future__ import annotations

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    ADAPTERS,
    ADAPTER_RUN,
    LYCORIS,
    PEFT_LORA,
)

OPTIONS: tuple[Option, ...] = (
    # -------------------------------------------------------------- Adapters
    Option(
        "lora_type", "str", "standard",
        "Adapter library: standard is a PEFT LoRA, lycoris uses LyCORIS as "
        "described by --lycoris_config.",
        ADAPTERS, choices=("standard", "lycoris"),
        applies_when=(ADAPTER_RUN,),
    ),
    Option(
        "lora_rank", "int", 16,
        "Inner dimension of the LoRA matrices. Larger ranks can learn more and "
        "cost more memory.",
        ADAPTERS, minimum=1,
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "lora_alpha", "float", None,
        "Numerator of the LoRA scale (alpha divided by rank). Unset means equal to "
        "the rank, a scale of 1.",
        ADAPTERS, minimum=0,
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "lora_dropout", "float", 0.0,
        "Dropout probability inside the LoRA layers while training.",
        ADAPTERS, minimum=0, maximum=1,
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "lora_init_type", "str", "default",
        "How new LoRA weights start: PEFT's default, gaussian, or one of the "
        "weight-aware schemes olora and pissa (loftq needs a 4-bit quantised base "
        "model, which is not available).",
        ADAPTERS, choices=("default", "gaussian", "loftq", "olora", "pissa"),
        implemented=("default", "gaussian", "olora", "pissa"),
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "use_dora", "bool", False,
        "Train a weight-decomposed LoRA (DoRA, PEFT's use_dora): each trained "
        "weight also learns its per-row magnitude. Saved in the diffusers layout, "
        "which load_lora_weights reads; not with --lora_format comfyui or the "
        "olora/pissa initialisations.",
        ADAPTERS,
        applies_when=(ADAPTER_RUN,),
    ),
    Option(
        "lora_target_modules", "list", None,
        "Names of the modules that receive LoRA layers, replacing the family's "
        "preset.",
        ADAPTERS,
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "flux_lora_target", "str", "all",
        "Which Flux layers a standard LoRA trains (unless --lora_target_modules "
        "names them): mmdit (image attention), context (text attention), "
        "context+ffs (text attention and feed-forward), all (all attention), "
        "all+ffs (attention and feed-forward), ai-toolkit (ai-toolkit's set), "
        "tiny (two single blocks' outputs), nano (one).",
        ADAPTERS, choices=("mmdit", "context", "context+ffs", "all", "all+ffs", "ai-toolkit", "tiny", "nano"),
        families=("flux",),
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "lora_format", "str", "diffusers",
        "Key layout of saved LoRA files: diffusers, or comfyui for the kohya-style "
        "layout that ComfyUI, A1111 and Forge load (sdxl, legacy, kolors and flux).",
        ADAPTERS, choices=("diffusers", "comfyui"),
        applies_when=(ADAPTER_RUN, PEFT_LORA),
    ),
    Option(
        "lycoris_config", "path", None,
        "JSON file describing the LyCORIS adapter (algorithm, dimensions, module "
        "presets). Required with --lora_type lycoris.",
        ADAPTERS,
        applies_when=(ADAPTER_RUN, LYCORIS),
    ),
)
