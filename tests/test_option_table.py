"""Checks on the option table itself (simpletuner.config.options).

The table is the single source of the CLI, config loaders, validation and
docs, so it must cover the spec (SimpleTuner's option reference, shared/seeds
beside the repository, whose option names are vendored in tests/data) and be
internally consistent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simpletuner.config.option import KINDS, Option
from simpletuner.config.options import ENVIRONMENT, GROUPS, OPTIONS, OPTIONS_BY_NAME

REPO = Path(__file__).resolve().parents[1]
# What the tests need from SimpleTuner's option reference (the seed document
# shared/seeds/001_c8c846924c82bbf7.txt): the option and environment variable
# names it documents, vendored so a clone without shared/ still checks them.
SEED_FACTS = Path(__file__).resolve().parent / "data" / "simpletuner_seed_options.json"
SIMPLETUNER_SEED = REPO.parent / "shared" / "seeds" / "001_c8c846924c82bbf7.txt"

# The option reference starts at the first option heading; the overview above
# it mentions "`--arguments`" as a figure of speech.  It ends where the
# config.env section begins, whose "`--multi_gpu`" belongs to accelerate.
_OPTIONS_START = re.compile(r"^#+ `--", re.MULTILINE)
_ENV_HEADING = "# Environment configuration variables"
_BACKTICKED_FLAG = re.compile(r"`--([A-Za-z0-9_]+)")
_HEADING_FLAG = re.compile(r"^#+ `--([A-Za-z0-9_]+)`", re.MULTILINE)
_ENV_BULLET = re.compile(r"^- `([A-Z][A-Z0-9_]+)`", re.MULTILINE)  # each variable opens a bullet


def extract_seed_facts(text: str) -> dict[str, list[str]]:
    """The names SimpleTuner's option reference documents, as the vendored file holds them."""
    start = _OPTIONS_START.search(text)
    end = text.find(_ENV_HEADING)
    assert start is not None and end > start.start(), "seed layout changed; update this parser"
    options = text[start.start() : end]
    return {
        "heading_flags": sorted(set(_HEADING_FLAG.findall(options))),
        "flags": sorted(set(_BACKTICKED_FLAG.findall(options))),
        "environment_variables": sorted(set(_ENV_BULLET.findall(text[end:]))),
    }


def _seed_facts() -> dict[str, list[str]]:
    facts = json.loads(SEED_FACTS.read_text(encoding="utf-8"))
    facts.pop("source")  # the file's note on where the names come from
    return facts


# --------------------------------------------------------------- coverage


def test_parser_reads_the_seed_layout():
    excerpt = """Pass `--arguments` on the command line.

## `--model_family`
- Which model. See also `--lr_end` below.

### `--lr_end`
- The final rate.

# Environment configuration variables
Set `--multi_gpu` through ACCELERATE_EXTRA_ARGS.
- `TRAINING_NUM_PROCESSES` how many processes
- `VENV_PATH` where the venv is
"""
    assert extract_seed_facts(excerpt) == {
        "heading_flags": ["lr_end", "model_family"],
        "flags": ["lr_end", "model_family"],
        "environment_variables": ["TRAINING_NUM_PROCESSES", "VENV_PATH"],
    }


def test_parser_finds_the_seed_flags():
    facts = _seed_facts()
    flags, headings = set(facts["flags"]), set(facts["heading_flags"])
    # Guard against a parser (or a vendored copy) that quietly holds nothing.
    assert len(headings) >= 45
    assert headings <= flags
    # Flags only mentioned in running text are found too.
    assert {"lr_end", "push_checkpoints_to_hub", "sageattention_usage", "revision"} <= flags
    assert "multi_gpu" not in flags and "arguments" not in flags


def test_vendored_seed_facts_match_the_seed_document():
    if not SIMPLETUNER_SEED.is_file():
        pytest.skip(f"the seed document is not beside this clone ({SIMPLETUNER_SEED}); the other option "
                    f"tests use the vendored copy {SEED_FACTS.name}, which this test keeps in step with it")
    fresh = extract_seed_facts(SIMPLETUNER_SEED.read_text(encoding="utf-8"))
    assert _seed_facts() == fresh, (
        f"{SEED_FACTS} is out of date; replace its lists with:\n{json.dumps(fresh, indent=2)}"
    )


def test_every_seed_flag_is_registered():
    missing = sorted(set(_seed_facts()["flags"]) - set(OPTIONS_BY_NAME))
    assert not missing, f"seed options missing from the table: {missing}"


def test_seed_environment_variables_are_registered():
    seed_vars = set(_seed_facts()["environment_variables"])
    assert "TRAINING_NUM_PROCESSES" in seed_vars
    names = {name for name, _default, _help in ENVIRONMENT}
    assert seed_vars <= names, sorted(seed_vars - names)


def test_environment_defaults():
    env = {name: default for name, default, _help in ENVIRONMENT}
    assert env == {
        "TRAINING_NUM_PROCESSES": "1",
        "TRAINING_NUM_MACHINES": "1",
        "TRAINING_MACHINE_RANK": "0",
        "TRAINING_MAIN_PROCESS_IP": "",
        "TRAINING_MAIN_PROCESS_PORT": "",
        "TRAINING_DYNAMO_BACKEND": "no",
        "SIMPLETUNER_LOG_LEVEL": "INFO",
        "SIMPLETUNER_PROGRESS": "auto",
        "VENV_PATH": ".venv",
        "ACCELERATE_EXTRA_ARGS": "",
        "ACCELERATE_CONFIG_PATH": "",
        "ENV": "",
        "CONFIG_BACKEND": "json",
        "CONFIG_PATH": "",
    }
    assert all(help_text.strip() for _name, _default, help_text in ENVIRONMENT)


# Options that later issues (model families, data, caches, training features)
# name explicitly; they are registered up front so configs can mention them.
LATER_ISSUE_OPTIONS = (
    # families
    "prediction_type", "rescale_betas_zero_snr", "flux_guidance_value",
    "pretrained_t5_model_name_or_path", "pretrained_vae_model_name_or_path",
    "pretrained_transformer_model_name_or_path", "pretrained_unet_model_name_or_path",
    "pretrained_transformer_subfolder", "pretrained_unet_subfolder",
    "list_model_families", "revision", "variant",
    # data
    "aspect_bucket_alignment", "minimum_image_size", "caption_dropout_probability",
    "data_backend_sampling", "ignore_final_epochs", "override_dataset_config",
    "preserve_data_backend_cache", "skip_file_discovery",
    # caches
    "vae_batch_size", "text_encoder_batch_size", "offload_during_startup",
    "vae_cache_scan_behaviour", "compress_disk_cache", "cache_only",
    # training features
    "lora_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_init_type",
    "lycoris_config", "lora_format", "gradient_checkpointing_interval",
    "optimizer_config", "optimizer_beta1", "optimizer_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "lr_num_cycles", "lr_end", "lr_power",
    "lr_warmup_steps", "lr_scale", "snr_gamma", "use_soft_min_snr",
    "soft_min_snr_sigma_data", "noise_offset", "noise_offset_probability",
    "input_perturbation", "timestep_bias_strategy", "timestep_bias_multiplier",
    "timestep_bias_begin", "timestep_bias_end", "timestep_bias_portion",
    "use_ema", "ema_decay", "ema_device", "ema_cpu_only", "ema_update_interval",
    "checkpoints_total_limit", "tracker_project_name", "tracker_run_name",
    "print_config", "hub_token",
)


def test_options_named_by_later_issues_are_registered():
    missing = [name for name in LATER_ISSUE_OPTIONS if name not in OPTIONS_BY_NAME]
    assert not missing


FLOW_DEFAULTS = {
    "flow_weighting_scheme": "none",
    "flow_logit_mean": 0.0,
    "flow_logit_std": 1.0,
    "flow_mode_scale": 1.29,
    "flow_shift": 1.0,
    "flow_resolution_shifting": False,
    "flow_base_seq_len": 256,
    "flow_max_seq_len": 4096,
    "flow_base_shift": 0.5,
    "flow_max_shift": 1.15,
}


@pytest.mark.parametrize("name, default", sorted(FLOW_DEFAULTS.items()))
def test_flow_matching_options(name, default):
    option = OPTIONS_BY_NAME[name]
    assert option.default == default
    assert type(option.default) is type(default)
    assert option.group == "Flow matching"


def test_flow_weighting_choices():
    assert set(OPTIONS_BY_NAME["flow_weighting_scheme"].choices) == {
        "none", "sigma_sqrt", "logit_normal", "mode", "cosmap",
    }


# ------------------------------------------------------------ consistency


def test_table_shape():
    assert all(isinstance(o, Option) for o in OPTIONS)
    names = [o.name for o in OPTIONS]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates
    assert len(OPTIONS_BY_NAME) == len(OPTIONS)
    assert len(set(GROUPS)) == len(GROUPS)


def test_groups_known_nonempty_and_in_display_order():
    unknown = sorted({o.group for o in OPTIONS} - set(GROUPS))
    assert not unknown
    order = [GROUPS.index(o.group) for o in OPTIONS]
    assert order == sorted(order), "OPTIONS must be ordered by group, as GROUPS lists them"
    assert {o.group for o in OPTIONS} == set(GROUPS), "every group heading needs options"


def test_every_option_has_real_help():
    for option in OPTIONS:
        assert option.kind in KINDS, option.name
        text = option.help.strip()
        assert len(text) >= 20, f"{option.name}: help too short"
        assert text[0].isupper() and text.endswith("."), f"{option.name}: help should be a sentence"


def _default_matches_kind(option: Option) -> bool:
    value = option.default
    if value is None:
        return True
    if option.kind == "bool":
        return isinstance(value, bool)
    if option.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if option.kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option.kind in ("str", "path"):
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def test_defaults_have_the_declared_kind():
    wrong = [o.name for o in OPTIONS if not _default_matches_kind(o)]
    assert not wrong


def test_defaults_are_among_choices():
    for option in OPTIONS:
        if not option.choices or option.default is None:
            continue
        values = option.default if isinstance(option.default, list) else [option.default]
        for value in values:
            assert value in option.choices, f"{option.name}: default {value!r} is not a choice"


def test_defaults_within_bounds():
    for option in OPTIONS:
        if option.default is None or option.kind not in ("int", "float"):
            continue
        if option.minimum is not None:
            assert option.default >= option.minimum, option.name
        if option.maximum is not None:
            assert option.default <= option.maximum, option.name
        if option.minimum is not None and option.maximum is not None:
            assert option.minimum <= option.maximum, option.name


def test_bounds_only_on_numbers_and_choices_only_on_text():
    for option in OPTIONS:
        if option.minimum is not None or option.maximum is not None:
            assert option.kind in ("int", "float"), option.name
        if option.choices:
            assert option.kind in ("str", "list"), option.name
            assert len(set(option.choices)) == len(option.choices), option.name


def test_obvious_bounds():
    for name in ("train_batch_size", "gradient_accumulation_steps", "vae_batch_size",
                 "text_encoder_batch_size", "lora_rank", "checkpointing_steps"):
        assert OPTIONS_BY_NAME[name].minimum == 1, name
    for name in ("learning_rate", "max_train_steps", "num_train_epochs", "lr_warmup_steps"):
        assert OPTIONS_BY_NAME[name].minimum == 0, name
    for name in ("lora_dropout", "caption_dropout_probability", "noise_offset_probability",
                 "timestep_bias_portion", "ema_decay"):
        option = OPTIONS_BY_NAME[name]
        assert (option.minimum, option.maximum) == (0, 1), name


def test_aliases_point_at_choices():
    for option in OPTIONS:
        if option.aliases:
            assert option.choices, option.name
            for alias, target in option.aliases.items():
                assert target in option.choices, option.name
                assert alias not in option.choices, option.name
    assert OPTIONS_BY_NAME["crop_style"].aliases == {"centre": "center"}


# ------------------------------------------------------- implemented flags


def test_implemented_tuples_are_nonempty_subsets_of_choices():
    for option in OPTIONS:
        if isinstance(option.implemented, tuple):
            assert option.choices, f"{option.name}: implemented tuple without choices"
            assert option.implemented, option.name
            assert set(option.implemented) <= set(option.choices), option.name
        else:
            assert option.implemented in (True, False), option.name


# SimpleTuner names whose default true describes what this trainer always does
# (each process already gets its own seed).
ON_BY_DEFAULT_AND_DONE = {"seed_for_each_device"}


def test_not_implemented_options_default_to_off():
    # A default config must validate, so nothing unimplemented may be on by default.
    for option in OPTIONS:
        if option.implemented is False and option.kind == "bool" and option.name not in ON_BY_DEFAULT_AND_DONE:
            assert option.default is False, option.name


# The first slice: what really works today.  Anything else claiming to be
# implemented is a lie the user would find out about mid-run.
SLICE = {
    "model_family": ('sdxl', 'legacy', 'sd3', 'flux', 'pixart_sigma', 'kolors'),
    "lora_init_type": ("default", "gaussian", "olora", "pissa"),
}
SLICE_FULLY = {
    # adapters (issue 7)
    "lora_type", "lycoris_config",
    # caches (issue 6) and caption dropout
    "vae_cache_scan_behaviour", "caption_dropout_probability", "offload_during_startup",
    "pretrained_model_name_or_path", "revision", "variant", "output_dir",
    "data_backend_config", "lora_rank", "lora_alpha", "lora_dropout", "learning_rate",
    "lr_warmup_steps", "optimizer_beta1", "optimizer_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "train_batch_size", "gradient_accumulation_steps",
    "max_train_steps", "num_train_epochs", "seed", "checkpointing_steps",
    "checkpoints_total_limit", "resume_from_checkpoint", "logging_dir",
    "tracker_project_name", "tracker_run_name", "resolution", "aspect_bucket_alignment",
    "minimum_image_size", "crop", "vae_batch_size", "text_encoder_batch_size",
    "snr_gamma", "gradient_checkpointing", "print_config", "list_model_families",
    "model_type", "lora_target_modules", "lr_scheduler", "optimizer_config", "lr_num_cycles",
    "lr_end", "lr_power", "lr_scale", "report_to", "use_ema", "ema_decay", "ema_device",
    "ema_cpu_only", "ema_update_interval", "cache_only", "compress_disk_cache",
    "pretrained_vae_model_name_or_path", "pretrained_vae_subfolder", "pretrained_unet_model_name_or_path",
    "pretrained_unet_subfolder", "pretrained_transformer_model_name_or_path", "pretrained_transformer_subfolder",
    # data (issue 5)
    "crop_style", "crop_aspect", "crop_aspect_buckets", "caption_strategy",
    "data_backend_sampling", "aspect_bucket_rounding", "preserve_data_backend_cache",
    "override_dataset_config", "skip_file_discovery", "ignore_final_epochs", "resolution_type",
    # legacy / kolors (issue 4)
    "prediction_type", "rescale_betas_zero_snr",
    # pixart_sigma (issue 4)
    "pretrained_t5_model_name_or_path",
    # sd3 / flux (issue 4)
    "flow_weighting_scheme", "flow_logit_mean", "flow_logit_std", "flow_mode_scale", "flow_shift",
    "flow_resolution_shifting", "flow_base_seq_len", "flow_max_seq_len", "flow_base_shift",
    "flow_max_shift", "flux_guidance_value", "sd3_skip_t5",
    # memory estimate (issue 13)
    "estimate_memory", "memory_limit_gb", "skip_memory_check",
    # the dry run (issue 19)
    "dry_run",
    # LoRA layout, checkpointing interval, schedule-free variants (issue 7)
    "optimizer", "lora_format", "gradient_checkpointing_interval",
    # loss and noise (issue 7)
    "use_soft_min_snr", "soft_min_snr_sigma_data", "noise_offset", "noise_offset_probability",
    "input_perturbation", "timestep_bias_strategy", "timestep_bias_multiplier", "timestep_bias_begin",
    "timestep_bias_end", "timestep_bias_portion",
    # quantised base models (issue 13): every choice works or the support matrix refuses it
    "base_model_precision", "quantize_via", "quantize_activations", "text_encoder_1_precision",
    "text_encoder_2_precision", "text_encoder_3_precision", "text_encoder_4_precision",
    # dtypes of the frozen base and of the VAE while caching (issue 13)
    "base_model_default_dtype", "vae_dtype",
    # SimpleTuner's global dataset defaults, quarantine and noise-offset switch (issue 16)
    "instance_prompt", "only_instance_prompt", "prepend_instance_prompt", "maximum_image_size",
    "target_downsample_size", "cache_dir_vae", "cache_dir_text", "parquet_caption_column",
    "parquet_filename_column", "aspect_bucket_worker_count", "print_filenames", "print_sampler_statistics",
    "ignore_missing_files", "delete_problematic_images", "delete_unwanted_images", "offset_noise",
    # publishing: Hub, model card, webhooks (issue 15)
    "push_to_hub", "push_checkpoints_to_hub", "hub_model_id", "hub_token", "model_card_note",
    "model_card_safe_for_work", "webhook_config", "webhook_reporting_interval",
    # SimpleTuner's training features (issue 16)
    "mixed_precision", "loss_type", "huber_schedule", "huber_c", "snr_weight", "grad_clip_method",
    "set_grads_to_none", "gradient_precision", "seed_for_each_device", "disable_bucket_pruning",
    "flux_use_beta_schedule", "flux_beta_schedule_alpha", "flux_beta_schedule_beta", "flux_use_uniform_schedule",
    "flow_matching_sigmoid_scale", "flux_guidance_mode", "flux_guidance_min", "flux_guidance_max",
    "flux_lora_target", "allow_tf32", "disable_tf32", "torch_num_threads",
    # DoRA and text-encoder LoRA training (issue 16)
    "use_dora", "train_text_encoder", "text_encoder_lr",
    # SimpleTuner v1.x's text-encoder training limits and saving (issue 16)
    "text_encoder_limit", "freeze_encoder", "freeze_encoder_strategy", "freeze_encoder_before",
    "freeze_encoder_after", "save_text_encoder",
    # SD3/Flux/PixArt text-encoder options (issue 16)
    "t5_padding", "tokenizer_max_length", "sd3_clip_uncond_behaviour", "sd3_t5_uncond_behaviour",
    "flux_attention_masked_training",
    # held-out evaluation loss (issue 14)
    "eval_dataset_id", "num_eval_images",
    # validation images and CLIP score (issue 14)
    "validation_prompt", "validation_negative_prompt", "user_prompt_library", "validation_prompt_library",
    "validation_using_datasets", "validation_disable_unconditional", "validation_steps", "validation_on_startup",
    "validation_resolution", "num_validation_images", "validation_num_inference_steps", "validation_guidance",
    "validation_guidance_real", "validation_no_cfg_until_timestep", "validation_guidance_rescale",
    "validation_guidance_skip_layers", "validation_guidance_skip_layers_start",
    "validation_guidance_skip_layers_stop", "validation_guidance_skip_scale", "validation_noise_scheduler",
    "validation_seed", "validation_randomize", "validation_torch_compile", "validation_lycoris_strength",
    "ema_validation", "disable_benchmark", "evaluation_type", "pretrained_evaluation_model_name_or_path",
    "tracker_image_layout",
    # latents encoded as batches need them (issue 17)
    "vae_cache_ondemand",
    # single-file checkpoints and family flavours (issue 16)
    "model_flavour", "single_file_config",
    # attention backends and fused QKV projections (issue 20): every choice works or is refused
    # by the backend table (package, GPU, family) in simpletuner/attention/backends.py
    "attention_mechanism", "sageattention_usage", "fused_qkv_projections",
    "enable_xformers_memory_efficient_attention",
    # SDXL base/refiner stage training (issue 20)
    "refiner_training", "refiner_training_strength", "refiner_training_invert_schedule",
    "sdxl_refiner_uses_full_range", "data_aesthetic_score",
    # dataloader prefetch (issue 20)
    "dataloader_prefetch", "dataloader_prefetch_qlen",
    # several nodes, ranks that never hang (issue 18)
    "distributed_timeout",
    # FSDP2, sharded checkpoints and DeepSpeed (issue 18)
    "fsdp_enable", "fsdp_version", "fsdp_reshard_after_forward", "fsdp_cpu_offload", "fsdp_state_dict_type",
    "fsdp_async_checkpointing", "fsdp_transformer_layer_cls_to_wrap", "fsdp_activation_checkpointing",
    "fsdp_auto_wrap_policy", "fsdp_min_num_params", "fsdp_cpu_ram_efficient_loading",
    "deepspeed_config",
}
# Accepted and named at start-up as having no effect (Option.no_effect): SimpleTuner's
# tuning knobs for machinery this trainer does not have (issue 16).
NO_EFFECT = {
    "metadata_update_interval", "fully_unload_text_encoder", "i_know_what_i_am_doing",
    "disable_segmented_timestep_sampling", "ema_foreach_disable", "aspect_bucket_disable_rebuild",
    "enable_multiprocessing", "max_workers", "read_batch_size", "write_batch_size",
    "image_processing_batch_size", "debug_aspect_buckets", "debug_dataset_loader", "aws_max_pool_connections",
    "keep_vae_loaded", "local_rank",
}


def test_implemented_matches_the_first_slice_exactly():
    for option in OPTIONS:
        if option.name in SLICE:
            assert option.implemented == SLICE[option.name], option.name
        elif option.name in NO_EFFECT:
            assert option.implemented is True and option.no_effect, option.name
        elif option.name in SLICE_FULLY:
            assert option.implemented is True, option.name
        else:
            assert option.implemented is False, f"{option.name} claims to be implemented"


def test_is_value_implemented_follows_the_record():
    from simpletuner.config.option import Option

    partial = Option("x", "str", "a", "h", GROUPS[0], choices=("a", "b", "c"), implemented=("a", "b"))
    assert partial.is_value_implemented("b") and not partial.is_value_implemented("c")
    listed = Option("y", "list", ["none"], "h", GROUPS[0], choices=("none", "p", "q"), implemented=("none", "p"))
    assert listed.is_value_implemented(["p"]) and not listed.is_value_implemented(["p", "q"])
    unbuilt = Option("z", "bool", False, "h", GROUPS[0], implemented=False)
    assert unbuilt.is_value_implemented(False) and not unbuilt.is_value_implemented(True)


# ----------------------------------------------------------------- secrets


def test_secrets():
    secret = {o.name for o in OPTIONS if o.secret}
    assert "hub_token" in secret
    # Secrets are free text with no default, so nothing real is ever shipped.
    for name in secret:
        option = OPTIONS_BY_NAME[name]
        assert option.kind == "str" and option.default is None, name
    assert not OPTIONS_BY_NAME["hub_model_id"].secret
