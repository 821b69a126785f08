"""SimpleTuner's option names that are not ours, so that none is ever "unknown".

Users arrive with config.json files written for SimpleTuner v1.x or its
current release.  Every name those use
(``shared/reference/simpletuner-v1-options.txt``) is one of:

* an option of ours, declared in its group module;
* a *spelling* of one of ours (:data:`SPELLINGS`): read as that option,
  printed by ``--print_config`` under our name;
* declared here, with SimpleTuner's default, as

  - *refused* (:func:`_refused`): only the default is accepted; any other
    value stops the run with "not implemented yet" and, where it will never
    be, the reason (other model families, ControlNet, DeepSpeed...);
  - *without effect* (:func:`_no_effect`): a tuning knob of SimpleTuner's own
    machinery that this design does not have (worker counts, read/write batch
    sizes, debug switches); a set value is named once at start-up and ignored.

A name declared in a group module wins over a declaration here
(:func:`undeclared`), so a feature built later needs no edit of this file.
"""

from __future__ import annotations

from typing import Any, Iterable

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    ADAPTERS,
    CACHING,
    COMPONENTS,
    CORE,
    DATA,
    EMA,
    FLOW,
    FLOW_FAMILIES,
    HARDWARE,
    LENGTH,
    LOSS,
    OPTIMIZER,
    RUN,
    SCHEDULE,
    VALIDATION,
)

# Our option -> the other names it is read under.  SimpleTuner v1.x's names
# first, then its current release's renamed spellings.  ``flux_schedule_shift``
# and ``flow_shift`` are the same transform (shift*s / (1 + (shift-1)*s), see
# training/flow_matching.py), and ``flux_schedule_auto_shift`` is Flux's
# resolution-dependent mu with the same 256/4096 tokens and 0.5/1.15 bounds as
# our ``flow_resolution_shifting`` defaults; only SimpleTuner's default shift (3)
# differs from ours (1).
SPELLINGS: dict[str, tuple[str, ...]] = {
    "checkpointing_steps": ("checkpoint_step_interval",),
    "validation_steps": ("validation_step_interval",),
    "fused_qkv_projections": ("fuse_qkv_projections",),
    "optimizer_beta1": ("adam_beta1",),
    "optimizer_beta2": ("adam_beta2",),
    "flow_shift": ("flux_schedule_shift", "flow_schedule_shift"),
    "flow_resolution_shifting": ("flux_schedule_auto_shift", "flow_schedule_auto_shift"),
    "flux_use_beta_schedule": ("flow_use_beta_schedule",),
    "flux_beta_schedule_alpha": ("flow_beta_schedule_alpha",),
    "flux_beta_schedule_beta": ("flow_beta_schedule_beta",),
    "flux_use_uniform_schedule": ("flow_use_uniform_schedule",),
    "flow_matching_sigmoid_scale": ("flow_sigmoid_scale",),
}

# Family names as SimpleTuner's current release spells them -> ours.
FAMILY_SPELLINGS: dict[str, str] = {"sd1x": "legacy", "sd2x": "legacy", "pixart": "pixart_sigma"}

# Reasons shown with "not implemented yet" for what this trainer will not do.
OTHER_FAMILY = "it belongs to a model family this trainer does not train"
CONTROLNET = "ControlNet training is outside this trainer's scope"
DEEPSPEED = ("DeepSpeed is configured by the file --deepspeed_config names (its offload_param section); "
             "this separate path is not read")


def _refused(name: str, kind: str, default: Any, help: str, group: str, reason: str | None = None,
             **extra: Any) -> Option:
    return Option(name, kind, default, help, group, implemented=False, refusal=reason, **extra)


def _no_effect(name: str, kind: str, default: Any, help: str, group: str, reason: str, **extra: Any) -> Option:
    return Option(name, kind, default, help, group, no_effect=reason, **extra)


OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------ Core model
    _refused("controlnet", "bool", False, "Train a ControlNet beside the frozen base model.", CORE, CONTROLNET),
    _refused("controlnet_model_name_or_path", "path", None, "ControlNet weights to continue training from.",
             CORE, CONTROLNET),
    _refused("smoldit", "bool", False, "Train SimpleTuner's small experimental SmolDiT model.", CORE,
             OTHER_FAMILY),
    _refused("smoldit_config", "str", "smoldit-base", "Size preset of the SmolDiT model.", CORE, OTHER_FAMILY),
    _refused("non_ema_revision", "str", None, "Hub revision holding the non-EMA weights of the base model.",
             CORE),
    # ------------------------------------------------------ Model components
    _no_effect("fully_unload_text_encoder", "bool", False, "Remove the text encoders from memory after caching.",
               COMPONENTS, "text encoders are loaded only to fill the text-embed cache and freed right after"),
    # -------------------------------------------- Precision and quantisation
    Option(
        "enable_xformers_memory_efficient_attention", "bool", False,
        "SimpleTuner v1.x's switch for xformers: true means --attention_mechanism xformers (when that is "
        "not set to something else).",
        HARDWARE,
    ),
    _refused("unet_attention_slice", "bool", False, "Compute a UNet's attention in slices to save memory.",
             HARDWARE, "attention slicing only helps inference; --gradient_checkpointing saves training memory"),
    # -------------------------------------------------------------- Adapters
    _refused("init_lora", "path", None, "LoRA weights a LyCORIS adapter starts from.", ADAPTERS),
    _refused("init_lokr_norm", "float", None, "Initial norm of a LyCORIS LoKr adapter's weights.", ADAPTERS),
    _refused("layer_freeze_strategy", "str", "none", "Freeze layers of a full fine-tune (bitfit keeps only the "
             "biases trainable).", ADAPTERS),
    # --------------------------------------------- Training length and batch
    _no_effect("i_know_what_i_am_doing", "bool", False, "Let SimpleTuner's safety checks pass unusual settings.",
               LENGTH, "no check here can be waived; each refusal says what to change"),
    # ------------------------------------------------------------- Optimizer
    _refused("fuse_optimizer", "bool", False, "Apply the optimizer step inside the backward pass.", OPTIMIZER),
    _refused("optimizer_release_gradients", "bool", False, "Free each gradient as soon as its step is applied.",
             OPTIMIZER),
    _refused("optimizer_cpu_offload_method", "str", "none", "Keep optimizer state on the CPU (torchao).",
             OPTIMIZER),
    _refused("optimizer_offload_gradients", "bool", False, "Also move gradients to the CPU with the optimizer "
             "state.", OPTIMIZER),
    _refused("offload_param_path", "path", None, "Folder DeepSpeed offloads parameters to.", OPTIMIZER,
             DEEPSPEED),
    # ------------------------------------------------ Learning rate schedule
    # -------------------------------------------------------- Loss and noise
    Option(
        "offset_noise", "bool", False,
        "SimpleTuner v1.x's switch for the noise offset: true turns it on with --noise_offset, or with "
        "SimpleTuner's strength 0.1 when --noise_offset is not set.",
        LOSS,
    ),
    _refused("input_perturbation_steps", "int", 0, "Apply --input_perturbation only during this many first "
             "steps.", LOSS),
    _refused("training_scheduler_timestep_spacing", "str", "trailing", "Timestep spacing of the training noise "
             "schedule.", LOSS),
    _refused("inference_scheduler_timestep_spacing", "str", "trailing", "Timestep spacing of the validation "
             "sampler.", VALIDATION),
    _no_effect("disable_segmented_timestep_sampling", "bool", False, "Draw each sample's timestep independently "
               "instead of from evenly spaced segments.", LOSS, "timesteps are always drawn independently here"),
    # --------------------------------------------------------- Flow matching
    _refused("flow_matching_loss", "str", "compatible", "Which flow-matching target and weighting to train "
             "with.", FLOW, families=FLOW_FAMILIES),
    _refused("flux_fast_schedule", "bool", False, "Train with FLUX.1-schnell's few-step schedule.", FLOW,
             families=("flux",)),
    # ------------------------------------------------------------------- EMA
    _no_effect("ema_foreach_disable", "bool", False, "Update the EMA one tensor at a time.", EMA,
               "the average is always updated one tensor at a time (diffusers' EMAModel without foreach)"),
    # ------------------------------------------------------------------ Data
    _no_effect("aspect_bucket_disable_rebuild", "bool", False, "Keep the saved aspect buckets instead of "
               "rebuilding them.", DATA, "buckets are planned afresh from the saved image sizes at every start, "
               "which reads no file; --preserve_data_backend_cache keeps the saved file list"),
    _no_effect("enable_multiprocessing", "bool", False, "Read image metadata with several processes.", DATA,
               "discovery reads image headers with threads; --aspect_bucket_worker_count sets how many"),
    _no_effect("max_workers", "int", 32, "Threads SimpleTuner's data loaders use.", DATA,
               "discovery threads come from --aspect_bucket_worker_count"),
    _no_effect("read_batch_size", "int", 25, "Images read per batch while scanning a dataset.", DATA,
               "discovery reads only image headers, in chunks it sizes itself"),
    _no_effect("write_batch_size", "int", 128, "Cache entries written per batch.", DATA,
               "cache writes are batched automatically"),
    _no_effect("image_processing_batch_size", "int", 32, "Images processed per batch while caching.", DATA,
               "latents are encoded --vae_batch_size images at a time"),
    _no_effect("debug_aspect_buckets", "bool", False, "Log details of aspect bucketing.", DATA,
               "set SIMPLETUNER_LOG_LEVEL=DEBUG in config/config.env for detailed data logs"),
    _no_effect("debug_dataset_loader", "bool", False, "Log details of dataset loading.", DATA,
               "set SIMPLETUNER_LOG_LEVEL=DEBUG in config/config.env for detailed data logs"),
    _no_effect("aws_max_pool_connections", "int", 128, "HTTP connections kept open to S3.", DATA,
               "the S3 client sizes its connection pool to its request threads"),
    # --------------------------------------------------------------- Caching
    _refused("vae_enable_tiling", "bool", False, "Encode large images with the VAE in tiles.", CACHING),
    _no_effect("keep_vae_loaded", "bool", False, "Keep the VAE in memory after the latent cache is built.",
               CACHING, "the VAE is freed once the latent cache is complete; nothing needs it while training"),
    _refused("accelerator_cache_clear_interval", "int", None, "Empty the accelerator's memory cache every this "
             "many steps.", HARDWARE),
    # ------------------------------------------------------------ Validation
    _refused("validation_seed_source", "str", "cpu", "Device whose generator seeds validation images.",
             VALIDATION),
    _refused("validation_torch_compile_mode", "str", "max-autotune", "The torch.compile mode of the validation "
             "pipeline.", VALIDATION),
    _refused("cache_clear_validation_prompts", "bool", False, "Encode validation prompts again at start-up.",
             VALIDATION),
    _refused("benchmark_base_model", "bool", False, "Render base-model images for comparison.", VALIDATION),
    _refused("enable_watermark", "bool", False, "Watermark SDXL validation images invisibly.", VALIDATION),
    # -------------------------------------------------- Logging and tracking
    # ----------------------------------------------------------- Run control
    _no_effect("local_rank", "int", -1, "The process's rank, as old launchers passed it.", RUN,
               "the launcher passes each process its rank through the environment (LOCAL_RANK)"),
)


def undeclared(options: Iterable[Option], declared: Iterable[str]) -> tuple[Option, ...]:
    """The compat declarations whose names no group module declares."""
    taken = set(declared)
    return tuple(option for option in options if option.name not in taken)
