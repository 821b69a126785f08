"""Names shared by the option groups: group headings, family sets, choice lists and
the conditions under which an option has an effect (:class:`AppliesWhen`)."""


from __future__ import annotations

from simpletuner.config.option import AppliesWhen, Option
from simpletuner.families.registry import FAMILY_NAMES, available_families
from simpletuner.quantisation.precisions import PRECISION_NAMES

# Group headings, in display order.
CORE = "Core model"
COMPONENTS = "Model components"
PRECISION = "Precision and quantisation"
ADAPTERS = "Adapters"
LENGTH = "Training length and batch"
OPTIMIZER = "Optimizer"
SCHEDULE = "Learning rate schedule"
LOSS = "Loss and noise"
FLOW = "Flow matching"
EMA = "EMA"
DATA = "Data"
IMAGES = "Image and text processing"
CACHING = "Caching"
CHECKPOINTS = "Checkpointing"
VALIDATION = "Validation"
PUBLISHING = "Publishing"
LOGGING = "Logging and tracking"
HARDWARE = "Hardware and performance"
RUN = "Run control"

GROUPS: tuple[str, ...] = (
    CORE,
    COMPONENTS,
    PRECISION,
    ADAPTERS,
    LENGTH,
    OPTIMIZER,
    SCHEDULE,
    LOSS,
    FLOW,
    EMA,
    DATA,
    IMAGES,
    CACHING,
    CHECKPOINTS,
    VALIDATION,
    PUBLISHING,
    LOGGING,
    HARDWARE,
    RUN,
)

MODEL_FAMILIES = FAMILY_NAMES
# Which families an objective- or encoder-specific option means something for.
FLOW_FAMILIES = ("sd3", "flux")
DIFFUSION_FAMILIES = ("sdxl", "legacy", "kolors", "pixart_sigma")
T5_FAMILIES = ("sd3", "flux", "pixart_sigma")
# Families whose diffusers LoRA loader reads the kohya layout (--lora_format comfyui);
# each has a kohya_lora_prefix.
KOHYA_LORA_FAMILIES = ("sdxl", "legacy", "kolors", "flux")
# Families whose text encoders --train_text_encoder trains (families/*.py: text_encoder_lora_targets,
# trainable_text_embeds).
TEXT_ENCODER_TRAINING_FAMILIES = ("legacy", "sdxl")

# Conditions under which an option has an effect (see Option.applies_when).
ADAPTER_RUN = AppliesWhen("model_type", ("lora",), "only --model_type lora trains an adapter (a full fine-tune "
                          "updates every weight)")
PEFT_LORA = AppliesWhen("lora_type", ("standard",), "with --lora_type lycoris the adapter comes from "
                        "--lycoris_config (linear_dim, linear_alpha, dropout, apply_preset)")
LYCORIS = AppliesWhen("lora_type", ("lycoris",), "only --lora_type lycoris reads it")
TRAIN_TE = AppliesWhen("train_text_encoder", (True,), "only --train_text_encoder uses it")
FULL_RUN = AppliesWhen("model_type", ("full",), "with --model_type lora the text encoders' LoRA is always saved "
                       "in the LoRA file, where load_lora_weights reads it")
FREEZING_ENCODER = AppliesWhen("freeze_encoder", (True,), "only --freeze_encoder uses it")
# --freeze_encoder_strategy (training/encoder_layers.py says what each freezes).
ENCODER_FREEZE_STRATEGIES = ("before", "after", "between", "outside")
BIAS_STRATEGY = AppliesWhen("timestep_bias_strategy", ("none",), "--timestep_bias_strategy={timestep_bias_strategy} "
                            "does not use it", unless=True)
LOGIT_NORMAL = AppliesWhen("flow_weighting_scheme", ("logit_normal",), "only --flow_weighting_scheme logit_normal "
                           "uses it, not {flow_weighting_scheme}")
RESOLUTION_SHIFTING = AppliesWhen("flow_resolution_shifting", (True,), "only --flow_resolution_shifting uses it")
FIXED_SHIFT = AppliesWhen("flow_resolution_shifting", (True,), "--flow_resolution_shifting chooses the shift per "
                          "image instead", unless=True)
MODE_SCHEME = AppliesWhen("flow_weighting_scheme", ("mode",), "only --flow_weighting_scheme mode uses it, "
                          "not {flow_weighting_scheme}")
BIAS_RANGE = AppliesWhen("timestep_bias_strategy", ("range",), "only --timestep_bias_strategy range uses it, "
                         "not {timestep_bias_strategy}")
BIAS_PORTION = AppliesWhen("timestep_bias_strategy", ("earlier", "later"), "only --timestep_bias_strategy earlier "
                           "or later uses it, not {timestep_bias_strategy}")
SOFT_MIN_SNR = AppliesWhen("use_soft_min_snr", (True,), "only --use_soft_min_snr uses it")
NOISE_OFFSET = AppliesWhen("noise_offset", (0, 0.0, None), "--noise_offset is 0, so no offset is added", unless=True)
FROZEN_BASE = AppliesWhen("model_type", ("lora",), "a full fine-tune trains every weight, kept in fp32 (see "
                          "--model_type)")
BF16_COMPUTE = AppliesWhen("mixed_precision", ("bf16",), "with --mixed_precision {mixed_precision} nothing "
                           "computes in bf16, so the frozen base stays fp32")
HUBER_LOSS = AppliesWhen("loss_type", ("huber", "smooth_l1"), "only --loss_type huber or smooth_l1 uses it, "
                         "not {loss_type}")
UNWEIGHTED_BY_SNR = AppliesWhen("snr_gamma", (None, 0, 0.0), "--snr_gamma weights the loss instead")
UNWEIGHTED_BY_SOFT_MIN_SNR = AppliesWhen("use_soft_min_snr", (True,), "--use_soft_min_snr weights the loss "
                                         "instead", unless=True)
BETA_SCHEDULE = AppliesWhen("flux_use_beta_schedule", (True,), "only --flux_use_beta_schedule uses it")
GUIDANCE_CONSTANT = AppliesWhen("flux_guidance_mode", ("constant",), "--flux_guidance_mode {flux_guidance_mode} "
                                "draws the guidance between --flux_guidance_min and --flux_guidance_max")
GUIDANCE_RANGE = AppliesWhen("flux_guidance_mode", ("random-range",), "only --flux_guidance_mode random-range "
                             "uses it")
CHECKPOINTING = AppliesWhen("gradient_checkpointing", (True,), "only --gradient_checkpointing uses it")
PUSHING = AppliesWhen("push_to_hub", (True,), "only --push_to_hub uploads to the Hub")
PREFETCHING = AppliesWhen("dataloader_prefetch", (True,), "only --dataloader_prefetch uses it")
REFINING = AppliesWhen("refiner_training", (True,), "only --refiner_training uses it")
SDXL_ONLY = AppliesWhen("model_family", ("sdxl",), "only --model_family sdxl has base and refiner stages")
EVAL_DATASET = AppliesWhen("eval_dataset_id", (None,), "it concerns the evaluation loss, which only "
                          "--eval_dataset_id turns on", unless=True)

OPTIMIZERS = (
    "adamw_bf16",
    "ao-adamw8bit",
    "ao-adamw4bit",
    "ao-adamfp8",
    "ao-adamwfp8",
    "adamw_schedulefree",
    "adamw_schedulefree+aggressive",
    "adamw_schedulefree+no_kahan",
    "optimi-stableadamw",
    "optimi-adamw",
    "optimi-lion",
    "optimi-radam",
    "optimi-ranger",
    "optimi-adan",
    "optimi-adam",
    "optimi-sgd",
    "soap",
    "bnb-adagrad",
    "bnb-adagrad8bit",
    "bnb-adam",
    "bnb-adam8bit",
    "bnb-adamw",
    "bnb-adamw8bit",
    "bnb-adamw-paged",
    "bnb-adamw8bit-paged",
    "bnb-lion",
    "bnb-lion8bit",
    "bnb-lion-paged",
    "bnb-lion8bit-paged",
    "bnb-ademamix",
    "bnb-ademamix8bit",
    "bnb-ademamix-paged",
    "bnb-ademamix8bit-paged",
    "prodigy",
)

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "linear",
)

# Every choice with its backend lives in simpletuner/quantisation/precisions.py.
BASE_MODEL_PRECISIONS = PRECISION_NAMES
