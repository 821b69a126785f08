"""Checks that look at more than one option, run before anything heavy loads.

Each rule is a small function taking the merged values and returning a
message (naming the option to change) or None.  Rules see the values after
options that have no effect were set aside (:mod:`simpletuner.config.inert`),
so they never judge an option the run ignores.  ``validate`` runs them all and
reports every problem at once, one per line, so the user fixes the file in one
go.  Single-option checks (type, choice, bounds) already happened in
``coerce_value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from simpletuner.config.options import OPTIONS
from simpletuner.config.training_rules import TRAINING_RULES, fp16_supported
from simpletuner.distributed.rules import sharding_fits
from simpletuner.errors import ConfigError

Values = Mapping[str, Any]
Rule = Callable[[Values], Optional[str]]

# Options that make the trainer print something and exit; they need no model.
INFORMATION_ONLY = ("print_config", "list_model_families")


def not_implemented(values: Values) -> Optional[str]:
    problems = []
    for option in OPTIONS:
        value = values[option.name]
        if not option.is_value_implemented(value):
            if isinstance(option.implemented, tuple):
                works = ", ".join(option.implemented)
                problems.append(
                    f"{option.flag}={_show(value)} is not implemented yet (working choices: {works})"
                )
            else:
                why = f" ({option.refusal})" if option.refusal else ""
                problems.append(
                    f"{option.flag} is not implemented yet{why}; remove it or set it to "
                    f"{_show(option.default)}"
                )
    return "\n".join(problems) or None


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def model_family_required(values: Values) -> Optional[str]:
    if not values["model_family"]:
        return "--model_family is required (for example sdxl); see --list_model_families"
    return None


def model_path_required(values: Values) -> Optional[str]:
    if not values["pretrained_model_name_or_path"] and not values.get("model_flavour"):
        return ("--pretrained_model_name_or_path is required (a diffusers model folder, hub id or "
                ".safetensors file), or --model_flavour to pick the family's model")
    return None


def model_flavour_known(values: Values) -> Optional[str]:
    from simpletuner.families.flavours import flavour_problem

    return flavour_problem(values)


def data_config_required(values: Values) -> Optional[str]:
    if not values["data_backend_config"]:
        return "--data_backend_config is required: the path of your multidatabackend.json"
    return None


def training_length(values: Values) -> Optional[str]:
    if values["max_train_steps"] == 0 and values["num_train_epochs"] == 0:
        return (
            "--max_train_steps and --num_train_epochs are both 0; set one of them "
            "so the run knows when to stop"
        )
    return None


def lycoris_needs_config(values: Values) -> Optional[str]:
    if values["lora_type"] == "lycoris" and not values.get("lycoris_config"):
        return "--lora_type=lycoris needs --lycoris_config (a JSON file naming the algorithm)"
    return None


def lycoris_config_valid(values: Values) -> Optional[str]:
    if values["model_type"] != "lora" or values["lora_type"] != "lycoris" or not values.get("lycoris_config"):
        return None
    from simpletuner.training.lycoris_config import read_lycoris_config

    try:
        read_lycoris_config(values["lycoris_config"])
    except ConfigError as error:
        return str(error)
    return None


def hub_model_id_valid(values: Values) -> Optional[str]:
    if not values.get("hub_model_id"):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(values["hub_model_id"])
    except HFValidationError:
        return (f"--hub_model_id={values['hub_model_id']} is not a Hub repository name: use name or user/name "
                "(letters, digits, '-', '_', '.'; at most 96 characters)")
    return None


def single_file_config_needs_a_file(values: Values) -> Optional[str]:
    """--single_file_config only means something beside a single-file checkpoint; never ignore it silently."""
    if not values.get("single_file_config"):
        return None
    from simpletuner.families.flavours import is_single_file

    if is_single_file(values.get("pretrained_model_name_or_path")):
        return None
    return (f"--single_file_config={values['single_file_config']} is only read when "
            "--pretrained_model_name_or_path is a single .safetensors file; remove it, or point "
            "--pretrained_model_name_or_path at the checkpoint file")


def webhook_config_valid(values: Values) -> Optional[str]:
    if not values.get("webhook_config"):
        return None
    from simpletuner.publishing.webhooks import read_webhook_config

    try:
        read_webhook_config(values["webhook_config"])
    except ConfigError as error:
        return str(error)
    return None


def loftq_unavailable(values: Values) -> Optional[str]:
    if values["lora_init_type"] == "loftq":
        return ("--lora_init_type=loftq fits the adapter to a 4-bit quantised base model (bitsandbytes on CUDA), "
                "which this trainer does not load; use pissa or olora for a weight-aware start")
    return None


def validation_resolution_format(values: Values) -> Optional[str]:
    from simpletuner.validation.prompts import parse_resolutions, size_multiple

    raw = values.get("validation_resolution")
    if raw in (None, ""):
        return None
    try:
        parse_resolutions(raw, size_multiple(values.get("model_family")))
    except ValueError as error:
        return (f"--validation_resolution={raw!r}: {error}; give sizes like 1024 or WIDTHxHEIGHT like "
                "1216x832, separated by commas")
    return None


def user_prompt_library_valid(values: Values) -> Optional[str]:
    from simpletuner.validation.prompts import read_prompt_library

    if not values.get("user_prompt_library"):
        return None
    try:
        read_prompt_library(values["user_prompt_library"])
    except ConfigError as error:
        return str(error)
    return None


def evaluation_model_usable(values: Values) -> Optional[str]:
    if values.get("evaluation_type") != "clip":
        return None
    from simpletuner.validation.clip_check import clip_model_problem

    return clip_model_problem(values.get("pretrained_evaluation_model_name_or_path"))


def report_to_none_alone(values: Values) -> Optional[str]:
    targets = values["report_to"] or []
    if "none" in targets and len(targets) > 1:
        return "--report_to: 'none' cannot be combined with trackers; list only the trackers you want"
    return None


def resume_path_exists(values: Values) -> Optional[str]:
    target = values["resume_from_checkpoint"]
    if target and target != "latest" and not Path(target).is_dir():
        return (
            f"--resume_from_checkpoint={target}: no such checkpoint folder; "
            "use 'latest' or the path of a checkpoint-N folder"
        )
    return None


def output_dir_is_folder(values: Values) -> Optional[str]:
    output = values["output_dir"]
    if output and Path(output).exists() and not Path(output).is_dir():
        return f"--output_dir={output} is a file; point it at a folder"
    return None


def lora_alpha_positive(values: Values) -> Optional[str]:
    alpha = values["lora_alpha"]
    if alpha is not None and alpha <= 0:
        return f"--lora_alpha must be greater than 0, got {alpha}"
    return None


def optimizer_hardware(values: Values) -> Optional[str]:
    from simpletuner.training.optimizers import hardware_problem

    return hardware_problem(values["optimizer"])


def schedule_free_needs_constant(values: Values) -> Optional[str]:
    from simpletuner.training.optimizers import is_schedule_free

    if is_schedule_free(values["optimizer"]):
        if values["lr_scheduler"] not in ("constant", "constant_with_warmup"):
            return (
                f"--optimizer={values['optimizer']} replaces the learning-rate schedule; set "
                "--lr_scheduler constant (its warm-up comes from --lr_warmup_steps)"
            )
    return None


def optimizer_config_parses(values: Values) -> Optional[str]:
    from simpletuner.training.optimizers import parse_optimizer_config

    try:
        parse_optimizer_config(values["optimizer_config"])
    except ConfigError as error:
        return str(error)
    return None


def soft_min_snr_settings(values: Values) -> Optional[str]:
    sigma_data = values["soft_min_snr_sigma_data"]
    if not values["use_soft_min_snr"]:
        return None
    if sigma_data is None:
        return (
            "--use_soft_min_snr needs --soft_min_snr_sigma_data, the standard deviation of the "
            "training latents (about 1.0 for latents scaled by the VAE's scaling factor)"
        )
    if sigma_data <= 0:
        return f"--soft_min_snr_sigma_data must be greater than 0, got {sigma_data}"
    if values["snr_gamma"]:
        return "--use_soft_min_snr and --snr_gamma are two loss weightings; keep only one of them"
    return None


def noise_offset_settings(values: Values) -> Optional[str]:
    if values["noise_offset"] and values["noise_offset_probability"] == 0:
        return "--noise_offset_probability=0 never applies --noise_offset; raise it or remove --noise_offset"
    return None


def timestep_bias_settings(values: Values) -> Optional[str]:
    strategy = values["timestep_bias_strategy"]
    problems = []
    if strategy != "none" and values["timestep_bias_multiplier"] == 1:
        problems.append(
            f"--timestep_bias_strategy={strategy} with --timestep_bias_multiplier=1 changes nothing; "
            "set the multiplier (e.g. 2.0 to favour those timesteps, 0.5 to avoid them)"
        )
    if strategy in ("earlier", "later"):
        portion = values["timestep_bias_portion"]
        if portion == 0:
            problems.append("--timestep_bias_portion must be greater than 0 (it is the share of timesteps favoured)")
        elif portion == 1:
            problems.append("--timestep_bias_portion=1 favours every timestep, which changes nothing; lower it")
    if strategy == "range" and values["timestep_bias_begin"] >= values["timestep_bias_end"]:
        problems.append(
            f"--timestep_bias_begin={values['timestep_bias_begin']} must be below "
            f"--timestep_bias_end={values['timestep_bias_end']} (the span runs from begin up to end)"
        )
    return "\n".join(problems) or None


def refiner_training_fits(values: Values) -> Optional[str]:
    """--refiner_training splits a DDPM schedule the way diffusers' SDXL pipelines chain stages."""
    if not values.get("refiner_training"):
        return None
    family = values["model_family"]
    if family and family != "sdxl":
        return (f"--refiner_training is for --model_family sdxl (diffusers chains SDXL stages with "
                f"denoising_end/denoising_start), not {family}; remove it")
    if values.get("sdxl_refiner_uses_full_range"):
        return ("--sdxl_refiner_uses_full_range trains every timestep but --refiner_training keeps to one "
                "stage's part; remove one of them")
    return None


def prefetch_fits(values: Values) -> Optional[str]:
    """The prefetch worker reads cache entries; with on-demand latents a read may have to encode, which
    belongs to the loop's thread (one VAE, loaded once)."""
    if values.get("dataloader_prefetch") and values.get("vae_cache_ondemand"):
        return ("--dataloader_prefetch with --vae_cache_ondemand is not implemented yet (the worker would have "
                "to encode missing latents); remove one of them, or cache first with --cache_only")
    return None


def lora_format_fits(values: Values) -> Optional[str]:
    from simpletuner.config.options import KOHYA_LORA_FAMILIES

    if values["lora_format"] != "comfyui":
        return None
    family = values["model_family"]
    if family and family not in KOHYA_LORA_FAMILIES:
        return (
            f"--lora_format=comfyui is not available for --model_family={family}: diffusers cannot load a "
            f"kohya-layout LoRA for it (works for {', '.join(KOHYA_LORA_FAMILIES)}); use --lora_format diffusers"
        )
    return None


def dora_fits(values: Values) -> Optional[str]:
    """--use_dora is PEFT's DoRA; refuse the settings that cannot carry its magnitudes."""
    if not values.get("use_dora") or values["model_type"] != "lora":
        return None
    if values["lora_type"] == "lycoris":
        return ("--use_dora is PEFT's DoRA for --lora_type standard; for LyCORIS set \"dora_wd\": true "
                "in --lycoris_config instead")
    if values["lora_format"] == "comfyui":
        # Our kohya writer has no dora_scale entries, and dropping the magnitudes would change the model.
        return "--use_dora cannot be saved with --lora_format comfyui; use --lora_format diffusers"
    if values["lora_init_type"] in ("olora", "pissa"):
        # Those inits train on a residual base; the saved LoRA is re-expressed
        # for the real base, which a magnitude learnt on the residual does not survive.
        return (f"--use_dora cannot be combined with --lora_init_type={values['lora_init_type']}; "
                "use default or gaussian")
    return None


def text_encoder_training_fits(values: Values) -> Optional[str]:
    """--train_text_encoder: a standard LoRA on (or a full fine-tune of) a supported family's
    text encoders, without the features that still read the (then missing) cached caption embeds."""
    from simpletuner.config.options.common import TEXT_ENCODER_TRAINING_FAMILIES
    from simpletuner.validation.prompts import validation_enabled

    if not values.get("train_text_encoder"):
        return None
    family = values["model_family"]
    if family and family not in TEXT_ENCODER_TRAINING_FAMILIES:
        return (f"--train_text_encoder is not implemented yet for --model_family={family} "
                f"(only {', '.join(TEXT_ENCODER_TRAINING_FAMILIES)}); remove it")
    lora = values["model_type"] == "lora"
    if lora and values["lora_type"] != "standard":
        return ("--train_text_encoder with --lora_type lycoris is not implemented yet; use --lora_type standard "
                "(or --model_type full)")
    if lora and values["lora_format"] == "comfyui":
        return "--train_text_encoder is not implemented yet with --lora_format comfyui; use --lora_format diffusers"
    if lora and values["lora_init_type"] in ("olora", "pissa"):
        return (f"--train_text_encoder is not implemented yet with --lora_init_type={values['lora_init_type']}; "
                "use default or gaussian")
    if validation_enabled(values):
        return ("--train_text_encoder with validation prompts is not implemented yet (validation would use the "
                "untrained text encoder); remove the validation prompt options")
    if values.get("eval_dataset_id"):
        return "--train_text_encoder with --eval_dataset_id is not implemented yet; remove --eval_dataset_id"
    for name in ("text_encoder_1_precision", "text_encoder_2_precision"):
        if values.get(name, "no_change") != "no_change":
            # The trained encoders are loaded at full precision; a quantised one would be silently ignored.
            return f"--train_text_encoder with --{name} is not implemented yet; remove --{name}"
    return None


RULES: tuple[Rule, ...] = (
    not_implemented,
    single_file_config_needs_a_file,
    model_family_required,
    model_path_required,
    model_flavour_known,
    data_config_required,
    training_length,
    lycoris_needs_config,
    validation_resolution_format,
    user_prompt_library_valid,
    evaluation_model_usable,
    report_to_none_alone,
    resume_path_exists,
    output_dir_is_folder,
    lora_alpha_positive,
    optimizer_hardware,
    schedule_free_needs_constant,
    optimizer_config_parses,
    soft_min_snr_settings,
    noise_offset_settings,
    timestep_bias_settings,
    refiner_training_fits,
    prefetch_fits,
    lora_format_fits,
    dora_fits,
    text_encoder_training_fits,
    lycoris_config_valid,
    loftq_unavailable,
    hub_model_id_valid,
    webhook_config_valid,
    sharding_fits,
) + TRAINING_RULES

# Rules that still apply when the user only asks for information.
_ALWAYS = (not_implemented, model_flavour_known, training_length, lycoris_needs_config, validation_resolution_format,
           user_prompt_library_valid,
           report_to_none_alone, lora_alpha_positive, schedule_free_needs_constant, optimizer_config_parses,
           soft_min_snr_settings, noise_offset_settings, timestep_bias_settings, lora_format_fits, dora_fits,
           text_encoder_training_fits, prefetch_fits,
           lycoris_config_valid, loftq_unavailable, hub_model_id_valid, webhook_config_valid,
           sharding_fits) + TRAINING_RULES


def information_only(values: Values) -> bool:
    """The user only asks for information (--print_config, --list_model_families)."""
    return any(values.get(name) for name in INFORMATION_ONLY)


def rule_problems(values: Values, env: Optional[Mapping[str, str]] = None, hardware: Any = None) -> list[str]:
    """Every cross-option problem, one message each (a message may hold several lines).

    ``env`` (TRAINING_DYNAMO_BACKEND, process count) and ``hardware`` (a
    ``quantisation.matrix.Hardware``; detected when None) feed the
    quantisation support matrix and the attention backend table.
    """
    asking_only = information_only(values)
    rules = _ALWAYS if asking_only else RULES
    problems = [message for rule in rules if (message := rule(values))]
    if not asking_only and not problems:
        # Only once the options themselves are sound: the matrix reads several of them.
        from simpletuner.attention.rules import attention_supported, fused_qkv_fits
        from simpletuner.quantisation.rules import quantisation_supported

        problems += [message for message in [quantisation_supported(values, env or {}, hardware),
                                             fp16_supported(values, hardware), fused_qkv_fits(values),
                                             attention_supported(values, hardware)] if message]
    return problems


def validate(values: Values, env: Optional[Mapping[str, str]] = None, hardware: Any = None) -> None:
    """Raise ConfigError listing every problem, or return quietly."""
    problems = rule_problems(values, env, hardware)
    if problems:
        raise ConfigError("\n".join(problems))
