"""Every user-facing option of the trainer, declared once.

The CLI parser, the JSON/TOML loaders, validation, ``documentation/OPTIONS.md``
and the configure wizard are all built from :data:`OPTIONS`.  Names, choices
and defaults follow SimpleTuner's option reference (our spec); the
flow-matching options follow finetrainers' names.

``implemented`` is honest: an option (or choice) that the trainer cannot do
yet is marked so, and validation rejects any non-default value for it with
"not implemented yet" instead of silently ignoring it.  Options that are not
implemented default to their "off" value so that a default config validates.

Positional fields of each entry: name, kind, default, help, group.

This module must stay import-light (no torch): ``train.py --help`` reads it.
"""

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

# Conditions under which an option has an effect (see Option.applies_when).
ADAPTER_RUN = AppliesWhen("model_type", ("lora",), "only --model_type lora trains an adapter (a full fine-tune "
                          "updates every weight)")
PEFT_LORA = AppliesWhen("lora_type", ("standard",), "with --lora_type lycoris the adapter comes from "
                        "--lycoris_config (linear_dim, linear_alpha, dropout, apply_preset)")
LYCORIS = AppliesWhen("lora_type", ("lycoris",), "only --lora_type lycoris reads it")
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
CHECKPOINTING = AppliesWhen("gradient_checkpointing", (True,), "only --gradient_checkpointing uses it")

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

OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------ Core model
    Option(
        "model_type", "str", "lora",
        "Train a small adapter on top of the frozen base model (lora), or update "
        "every weight of the model (full).",
        CORE, choices=("lora", "full"),
    ),
    Option(
        "model_family", "str", None,
        "The model architecture being trained. It has no default: name the family "
        "that matches the base model (see --list_model_families).",
        CORE, choices=MODEL_FAMILIES, implemented=available_families(),
    ),
    Option(
        "pretrained_model_name_or_path", "path", None,
        "The base model to start from: a Hugging Face Hub id or a local folder in "
        "diffusers layout.",
        CORE,
    ),
    Option(
        "revision", "str", None,
        "Branch, tag or commit of the base model's Hub repository to load.",
        CORE,
    ),
    Option(
        "variant", "str", None,
        "Weight variant of the base model to load (for example fp16), where the "
        "repository publishes one.",
        CORE,
    ),
    Option(
        "output_dir", "path", "output/models",
        "Folder that receives checkpoints and the final trained weights.",
        CORE,
    ),
    Option(
        "refiner_training", "bool", False,
        "Train one stage of a two-model (mixture-of-experts) setup in which each "
        "model handles its own part of the noise schedule.",
        CORE, implemented=False,
    ),
    # ------------------------------------------------------ Model components
    Option(
        "pretrained_vae_model_name_or_path", "path", None,
        "Take the VAE from this Hub id or folder instead of from the base model.",
        COMPONENTS,
    ),
    Option(
        "pretrained_vae_subfolder", "str", None,
        "Folder holding the VAE inside --pretrained_vae_model_name_or_path (unset: its "
        "root), or inside the base model when no separate path is given.",
        COMPONENTS,
    ),
    Option(
        "pretrained_unet_model_name_or_path", "path", None,
        "Take the UNet from this Hub id or folder instead of from the base model "
        "(UNet families only).",
        COMPONENTS,
        families=("sdxl", "legacy", "kolors"),
    ),
    Option(
        "pretrained_unet_subfolder", "str", None,
        "Folder holding the UNet inside --pretrained_unet_model_name_or_path (unset: its "
        "root), or inside the base model when no separate path is given.",
        COMPONENTS,
        families=("sdxl", "legacy", "kolors"),
    ),
    Option(
        "pretrained_transformer_model_name_or_path", "path", None,
        "Take the diffusion transformer from this Hub id or folder instead of from "
        "the base model (transformer families only).",
        COMPONENTS,
        families=("sd3", "flux", "pixart_sigma"),
    ),
    Option(
        "pretrained_transformer_subfolder", "str", None,
        "Folder holding the transformer inside --pretrained_transformer_model_name_or_path (unset: its "
        "root), or inside the base model when no separate path is given.",
        COMPONENTS,
        families=("sd3", "flux", "pixart_sigma"),
    ),
    Option(
        "pretrained_t5_model_name_or_path", "path", None,
        "Load the T5 text encoder and tokenizer from this Hub id or diffusers model "
        "folder (same subfolder names as the base model), so one local copy can "
        "serve several base models.",
        COMPONENTS,
        families=T5_FAMILIES,
    ),
    Option(
        "sd3_skip_t5", "bool", False,
        "For SD3, feed zeros in place of the T5 part of the prompt embeddings while "
        "training, as the pipeline does when loaded without T5, so the model "
        "learns to do without it.",
        COMPONENTS,
        families=("sd3",),
    ),
    # -------------------------------------------- Precision and quantisation
    Option(
        "mixed_precision", "str", "bf16",
        "Number format used for the forward and backward passes: bf16, fp16, or no "
        "for plain fp32.",
        PRECISION, choices=("no", "bf16", "fp16"), implemented=("no", "bf16"),
    ),
    Option(
        "base_model_precision", "str", "no_change",
        "Quantise the frozen base model to save memory, with optimum-quanto, torchao "
        "or bitsandbytes; no_change keeps the weights as loaded.  Which choices work "
        "on which hardware is in documentation/QUANTISATION.md.",
        PRECISION, choices=BASE_MODEL_PRECISIONS,
    ),
    Option(
        "base_model_default_dtype", "str", "bf16",
        "Storage dtype of the frozen base model's weights that are not quantised (the "
        "whole frozen denoiser when --base_model_precision is no_change): bf16 halves "
        "their memory, fp32 keeps full precision (autocast still computes in bf16). "
        "Trained adapter weights stay fp32 either way.",
        PRECISION, choices=("bf16", "fp32"),
        applies_when=(FROZEN_BASE, BF16_COMPUTE),
    ),
    Option(
        "quantize_via", "str", "cpu",
        "Device that performs quantisation: cpu is slower but spares accelerator "
        "memory, accelerator is quicker but can run out of memory on big models.",
        PRECISION, choices=("cpu", "accelerator"),
    ),
    Option(
        "quantize_activations", "bool", False,
        "Also quantise the activations of the quantised layers; refused where the "
        "backend cannot train that way (see documentation/QUANTISATION.md).",
        PRECISION,
    ),
    *(
        Option(
            f"text_encoder_{index}_precision", "str", "no_change",
            f"Quantise text encoder {index} while the text-embed cache is built (same "
            "choices as --base_model_precision); the cache key includes it.",
            PRECISION, choices=BASE_MODEL_PRECISIONS, families=families,
        )
        for index, families in (
            (1, None), (2, ("sdxl", "sd3", "flux")), (3, ("sd3",)), (4, ()),
        )
    ),
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
        "lora_target_modules", "list", None,
        "Names of the modules that receive LoRA layers, replacing the family's "
        "preset.",
        ADAPTERS,
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
    # ---------------------------------------------- Training length and batch
    Option(
        "train_batch_size", "int", 1,
        "Samples per batch on each process.",
        LENGTH, minimum=1,
    ),
    Option(
        "gradient_accumulation_steps", "int", 1,
        "Batches whose gradients are summed before each optimizer step; raises the "
        "effective batch size without raising memory use.",
        LENGTH, minimum=1,
    ),
    Option(
        "max_train_steps", "int", 0,
        "Stop after this many optimizer steps. 0 leaves the length to "
        "--num_train_epochs.",
        LENGTH, minimum=0,
    ),
    Option(
        "num_train_epochs", "int", 1,
        "Number of passes over the whole dataset. 0 leaves the length to "
        "--max_train_steps.",
        LENGTH, minimum=0,
    ),
    Option(
        "ignore_final_epochs", "bool", False,
        "Keep training until --max_train_steps even when the epoch count, "
        "recomputed after a dataset change, would end the run sooner. Always "
        "the case here: a set --max_train_steps alone decides when a run stops.",
        LENGTH,
    ),
    Option(
        "seed", "int", None,
        "Random seed that makes a run reproducible. Unset leaves the run unseeded.",
        LENGTH, minimum=0,
    ),
    # ------------------------------------------------------------- Optimizer
    Option(
        "optimizer", "str", "adamw_bf16",
        "Optimizer algorithm. Several need particular hardware or libraries (fp8 "
        "and paged variants need a CUDA accelerator).",
        OPTIMIZER, choices=OPTIMIZERS,
    ),
    Option(
        "optimizer_config", "str", None,
        "Extra optimizer settings as comma-separated key=value pairs, for example "
        "d_coef=0.1 for prodigy.",
        OPTIMIZER,
    ),
    Option(
        "optimizer_beta1", "float", None,
        "First-moment decay of Adam-style optimizers. Unset keeps the optimizer's "
        "own default.",
        OPTIMIZER, minimum=0, maximum=1,
    ),
    Option(
        "optimizer_beta2", "float", None,
        "Second-moment decay of Adam-style optimizers. Unset keeps the optimizer's "
        "own default.",
        OPTIMIZER, minimum=0, maximum=1,
    ),
    Option(
        "adam_weight_decay", "float", 1e-2,
        "Weight decay strength applied by the optimizer.",
        OPTIMIZER, minimum=0,
    ),
    Option(
        "adam_epsilon", "float", 1e-8,
        "Small constant in the optimizer's denominator that keeps updates finite.",
        OPTIMIZER, minimum=0,
    ),
    Option(
        "max_grad_norm", "float", 2.0,
        "Gradients are rescaled so that their overall norm does not exceed this "
        "value.",
        OPTIMIZER, minimum=0,
    ),
    # ------------------------------------------------ Learning rate schedule
    Option(
        "learning_rate", "float", 1e-4,
        "Peak learning rate, reached once any warmup is over. LoRA runs usually "
        "sit far higher than full fine-tunes.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_scheduler", "str", "constant",
        "Shape of the learning rate over the run.",
        SCHEDULE, choices=LR_SCHEDULERS,
    ),
    Option(
        "lr_warmup_steps", "int", 0,
        "Optimizer steps over which the learning rate ramps up from zero.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_num_cycles", "int", 1,
        "How many times cosine_with_restarts restarts its cycle.",
        SCHEDULE, minimum=1,
    ),
    Option(
        "lr_end", "float", 4e-7,
        "Learning rate the polynomial schedule arrives at by the final step.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_power", "float", 1.0,
        "Exponent of the polynomial schedule; 1.0 is a straight line.",
        SCHEDULE, minimum=0,
    ),
    Option(
        "lr_scale", "bool", False,
        "Multiply the learning rate by the effective batch size (batch size x "
        "accumulation steps x processes).",
        SCHEDULE,
    ),
    # -------------------------------------------------------- Loss and noise
    Option(
        "prediction_type", "str", None,
        "What the model predicts: epsilon (the noise), v_prediction, or sample. "
        "Unset reads it from the model's scheduler config.",
        LOSS, choices=("epsilon", "v_prediction", "sample"),
        families=DIFFUSION_FAMILIES,
    ),
    Option(
        "rescale_betas_zero_snr", "bool", False,
        "Rescale the noise schedule so the last timestep is pure noise (zero "
        "terminal SNR), with trailing timestep spacing. Use it with "
        "v_prediction; a full fine-tune is saved with a scheduler that samples "
        "this way.",
        LOSS,
        families=DIFFUSION_FAMILIES,
    ),
    Option(
        "snr_gamma", "float", None,
        "Enable min-SNR loss weighting with this gamma; 5 is the usual choice. "
        "Low-noise timesteps get their loss capped so they do not dominate.",
        LOSS, minimum=0,
        families=DIFFUSION_FAMILIES,
    ),
    Option(
        "use_soft_min_snr", "bool", False,
        "Use the smoother soft-min-SNR weighting (needs --soft_min_snr_sigma_data; "
        "not with --snr_gamma), which pixel-space models need and latent models "
        "may find blurry.",
        LOSS,
        families=DIFFUSION_FAMILIES,
    ),
    Option(
        "soft_min_snr_sigma_data", "float", None,
        "Data standard deviation assumed by soft-min-SNR weighting; required "
        "with --use_soft_min_snr (about 1.0 for scaled latents).",
        LOSS, minimum=0,
        families=DIFFUSION_FAMILIES,
        applies_when=(SOFT_MIN_SNR,),
    ),
    Option(
        "noise_offset", "float", 0.0,
        "Add a per-channel constant of this size to the noise, which helps the "
        "model reach very dark and very bright images. 0 turns it off.",
        LOSS, minimum=0,
    ),
    Option(
        "noise_offset_probability", "float", 0.25,
        "Chance that each sample receives the noise offset.",
        LOSS, minimum=0, maximum=1,
        applies_when=(NOISE_OFFSET,),
    ),
    Option(
        "input_perturbation", "float", 0.0,
        "Strength of extra noise mixed into the noisy input (not the target), a "
        "regulariser against exposure bias. 0 turns it off.",
        LOSS, minimum=0,
    ),
    Option(
        "timestep_bias_strategy", "str", "none",
        "Sample some timesteps more often: earlier (less noisy) or later "
        "(noisier) ones, or a chosen range. none samples them evenly.",
        LOSS, choices=("none", "earlier", "later", "range"),
        families=DIFFUSION_FAMILIES,
    ),
    Option(
        "timestep_bias_multiplier", "float", 1.0,
        "Weight given to the favoured timesteps; 2.0 makes them twice as likely, "
        "0.5 half as likely, 0 never draws them.",
        LOSS, minimum=0,
        families=DIFFUSION_FAMILIES,
        applies_when=(BIAS_STRATEGY,),
    ),
    Option(
        "timestep_bias_begin", "int", 0,
        "First timestep of the favoured span when the strategy is range.",
        LOSS, minimum=0,
        families=DIFFUSION_FAMILIES,
        applies_when=(BIAS_RANGE,),
    ),
    Option(
        "timestep_bias_end", "int", 1000,
        "End of the favoured span when the strategy is range; the span stops "
        "just before this timestep.",
        LOSS, minimum=0,
        families=DIFFUSION_FAMILIES,
        applies_when=(BIAS_RANGE,),
    ),
    Option(
        "timestep_bias_portion", "float", 0.25,
        "Share of the schedule that is favoured by the earlier and later "
        "strategies.",
        LOSS, minimum=0, maximum=1,
        families=DIFFUSION_FAMILIES,
        applies_when=(BIAS_PORTION,),
    ),
    # --------------------------------------------------------- Flow matching
    Option(
        "flow_weighting_scheme", "str", "none",
        "How flow-matching sigmas are drawn and the loss weighted. none means "
        "uniform sigmas and an unweighted loss.",
        FLOW, choices=("none", "sigma_sqrt", "logit_normal", "mode", "cosmap"),
        families=FLOW_FAMILIES,
    ),
    Option(
        "flow_logit_mean", "float", 0.0,
        "Mean of the logit-normal distribution, used by the logit_normal scheme.",
        FLOW,
        families=FLOW_FAMILIES,
        applies_when=(LOGIT_NORMAL,),
    ),
    Option(
        "flow_logit_std", "float", 1.0,
        "Spread of the logit-normal distribution, used by the logit_normal "
        "scheme.",
        FLOW, minimum=0,
        families=FLOW_FAMILIES,
        applies_when=(LOGIT_NORMAL,),
    ),
    Option(
        "flow_mode_scale", "float", 1.29,
        "Scale of the mode scheme's sigma distribution.",
        FLOW,
        families=FLOW_FAMILIES,
        applies_when=(MODE_SCHEME,),
    ),
    Option(
        "flow_shift", "float", 1.0,
        "Fixed shift applied to sampled sigmas, shift*s / (1 + (shift-1)*s). "
        "Values above 1 push training toward noisier steps; 1 leaves them as is.",
        FLOW, minimum=0,
        families=FLOW_FAMILIES,
        applies_when=(FIXED_SHIFT,),
    ),
    Option(
        "flow_resolution_shifting", "bool", False,
        "Choose the shift from each image's token count instead of using "
        "--flow_shift, as SD3 and Flux do for large images.",
        FLOW,
        families=FLOW_FAMILIES,
    ),
    Option(
        "flow_base_seq_len", "int", 256,
        "Token count that maps to --flow_base_shift under resolution shifting.",
        FLOW, minimum=1,
        families=FLOW_FAMILIES,
        applies_when=(RESOLUTION_SHIFTING,),
    ),
    Option(
        "flow_max_seq_len", "int", 4096,
        "Token count that maps to --flow_max_shift under resolution shifting.",
        FLOW, minimum=1,
        families=FLOW_FAMILIES,
        applies_when=(RESOLUTION_SHIFTING,),
    ),
    Option(
        "flow_base_shift", "float", 0.5,
        "Under resolution shifting, the log of the shift (mu) for images of "
        "--flow_base_seq_len tokens; mu is linear in the token count, as in Flux.",
        FLOW,
        families=FLOW_FAMILIES,
        applies_when=(RESOLUTION_SHIFTING,),
    ),
    Option(
        "flow_max_shift", "float", 1.15,
        "Under resolution shifting, the log of the shift (mu) for images of "
        "--flow_max_seq_len tokens.",
        FLOW,
        families=FLOW_FAMILIES,
        applies_when=(RESOLUTION_SHIFTING,),
    ),
    Option(
        "flux_guidance_value", "float", 1.0,
        "Value fed to Flux's guidance embedding while training.",
        FLOW, minimum=0,
        families=("flux",),
    ),
    # ------------------------------------------------------------------- EMA
    Option(
        "use_ema", "bool", False,
        "Keep an exponential moving average of the trained weights alongside the "
        "live ones; steadier results for some extra memory and time.",
        EMA,
    ),
    Option(
        "ema_decay", "float", 0.995,
        "How much of the old average survives each update; closer to 1 moves "
        "more slowly.",
        EMA, minimum=0, maximum=1,
    ),
    Option(
        "ema_device", "str", "cpu",
        "Where the averaged weights live: cpu saves accelerator memory, "
        "accelerator avoids slow transfers. --ema_cpu_only takes precedence.",
        EMA, choices=("cpu", "accelerator"),
    ),
    Option(
        "ema_cpu_only", "bool", False,
        "Keep the averaged weights on the CPU and update them there, never "
        "moving them to the accelerator.",
        EMA,
    ),
    Option(
        "ema_update_interval", "int", None,
        "Update the average only every this many optimizer steps. Unset updates "
        "it every step.",
        EMA, minimum=1,
    ),
    Option(
        "ema_validation", "str", "none",
        "Which weights validation images use: none (live weights only), ema_only, "
        "or comparison (both).",
        EMA, choices=("none", "ema_only", "comparison"), implemented=False,
    ),
    # ------------------------------------------------------------------ Data
    Option(
        "data_backend_config", "path", None,
        "The multidatabackend.json file that lists the datasets to train on and "
        "their caches.",
        DATA,
    ),
    Option(
        "data_backend_sampling", "str", "auto-weighting",
        "How batches are shared between datasets: auto-weighting by each "
        "dataset's size and repeats, or uniform by their probabilities alone.",
        DATA, choices=("uniform", "auto-weighting"),
    ),
    Option(
        "override_dataset_config", "bool", False,
        "Accept a change to a dataset's size or crop settings after its latents "
        "were cached: rebuild its buckets and encode again, instead of stopping.",
        DATA,
    ),
    Option(
        "preserve_data_backend_cache", "bool", False,
        "Keep each dataset's saved file list and bucket metadata as they are "
        "instead of refreshing them at start-up.",
        DATA,
    ),
    Option(
        "skip_file_discovery", "list", None,
        "Start-up checks every dataset skips unless it sets its own: aspect and "
        "metadata trust the saved file list, vae and text assume the latent and "
        "text-embed caches are complete.",
        DATA, choices=("vae", "aspect", "text", "metadata"),
    ),
    Option(
        "caption_dropout_probability", "float", 0.0,
        "Chance of training a sample with the empty prompt's embeddings instead "
        "of its caption's, which teaches unconditional generation (for CFG).",
        DATA, minimum=0, maximum=1,
    ),
    Option(
        "dataloader_prefetch", "bool", False,
        "Prepare batches ahead of time in the background, for runs where reading "
        "files is the bottleneck.",
        DATA, implemented=False,
    ),
    Option(
        "dataloader_prefetch_qlen", "int", 10,
        "How many prepared batches each process keeps ready when prefetching.",
        DATA, minimum=1, implemented=False,
    ),
    # ----------------------------------------------- Image and text processing
    Option(
        "resolution", "float", 1024,
        "Training size used by datasets that set none: pixels for pixel and "
        "pixel_area, megapixels for area.",
        IMAGES, minimum=0,
    ),
    Option(
        "resolution_type", "str", "pixel_area",
        "How --resolution is read: pixel sets the shorter edge, pixel_area sets "
        "an area of resolution squared split into aspect buckets, area "
        "(deprecated) is pixel_area given in megapixels (1.0 = 1000x1000).",
        IMAGES, choices=("pixel", "area", "pixel_area"),
    ),
    Option(
        "aspect_bucket_alignment", "int", 64,
        "Bucket widths and heights are rounded to a multiple of this many pixels.",
        IMAGES, minimum=8,
    ),
    Option(
        "aspect_bucket_rounding", "int", None,
        "Round each image's aspect ratio to this many decimal places before "
        "bucketing, merging near-identical aspects. Unset keeps buckets exact.",
        IMAGES, minimum=1, maximum=9,
    ),
    Option(
        "minimum_image_size", "float", None,
        "Leave out images smaller than this (same unit as --resolution). Unset "
        "keeps them all.",
        IMAGES, minimum=0,
    ),
    Option(
        "crop", "bool", False,
        "Crop newly discovered images to their bucket's shape instead of only "
        "resizing them.",
        IMAGES,
    ),
    Option(
        "crop_style", "str", "random",
        "Which part is kept when cropping: the center, the bottom-right corner, a "
        "random window, or the largest face.",
        IMAGES, choices=("center", "corner", "random", "face"), aliases={"centre": "center"},
    ),
    Option(
        "crop_aspect", "str", "square",
        "Shape of crops: square, preserve (the image's own aspect), or closest or "
        "random from --crop_aspect_buckets.",
        IMAGES, choices=("square", "preserve", "closest", "random"),
    ),
    Option(
        "crop_aspect_buckets", "list", None,
        "Aspect ratios (width / height) that the closest and random crop aspects "
        "choose from.",
        IMAGES,
    ),
    Option(
        "caption_strategy", "str", "filename",
        "Where captions come from: a .txt file beside each image, the cleaned-up "
        "file name, a parquet table, or the dataset's instance_prompt.",
        IMAGES, choices=("textfile", "filename", "parquet", "instanceprompt"),
    ),
    # --------------------------------------------------------------- Caching
    Option(
        "vae_batch_size", "int", 4,
        "Images encoded together when filling the latent cache.",
        CACHING, minimum=1,
    ),
    Option(
        "text_encoder_batch_size", "int", 8,
        "Captions encoded together when filling the text-embed cache.",
        CACHING, minimum=1,
    ),
    Option(
        "vae_dtype", "str", "default",
        "Dtype the VAE runs in while encoding the latent cache: default keeps the "
        "family's choice (fp32); fp16 or bf16 encode faster in less memory but give "
        "slightly different latents (a different cache key, so they are encoded "
        "again). The stock SDXL VAE overflows in fp16: use an fp16-safe VAE "
        "(--pretrained_vae_model_name_or_path) with fp16.",
        CACHING, choices=("default", "fp16", "bf16", "fp32"),
    ),
    Option(
        "vae_cache_scan_behaviour", "str", "recreate",
        "What a dataset's scan_for_errors check does with a bad latent: recreate "
        "deletes it to be encoded again; sync keeps a sound latent of another size "
        "and moves its image to the bucket that latent fits.",
        CACHING, choices=("recreate", "sync"),
    ),
    Option(
        "compress_disk_cache", "bool", False,
        "Compress cached latents and text embeds on disk; saves much space on "
        "padded T5 embeds. Entries of either form are read whatever this is set to.",
        CACHING,
    ),
    Option(
        "offload_during_startup", "bool", False,
        "Keep the text encoders off the accelerator while the latent cache is "
        "built. Always the case here: text encoders load only after the VAE is "
        "freed, so this setting changes nothing.",
        CACHING,
    ),
    # --------------------------------------------------------- Checkpointing
    Option(
        "checkpointing_steps", "int", 500,
        "Save a resumable checkpoint every this many optimizer steps.",
        CHECKPOINTS, minimum=1,
    ),
    Option(
        "checkpoints_total_limit", "int", None,
        "Keep at most this many checkpoints, deleting the oldest. Unset keeps all "
        "of them.",
        CHECKPOINTS, minimum=1,
    ),
    Option(
        "resume_from_checkpoint", "str", None,
        "Continue a run: latest picks the newest checkpoint in --output_dir, or "
        "give the path of a checkpoint folder.",
        CHECKPOINTS,
    ),
    # ------------------------------------------------------------ Validation
    Option(
        "validation_prompt", "str", None,
        "Prompt for sample images generated during training. Unset turns "
        "validation images off.",
        VALIDATION, implemented=False,
    ),
    Option(
        "validation_negative_prompt", "str", "blurry, cropped, ugly",
        "Negative prompt used for validation images.",
        VALIDATION, implemented=False,
    ),
    Option(
        "user_prompt_library", "path", None,
        "JSON file of named extra prompts that are rendered at every validation.",
        VALIDATION, implemented=False,
    ),
    Option(
        "validation_steps", "int", 100,
        "Generate validation images every this many optimizer steps.",
        VALIDATION, minimum=1, implemented=False,
    ),
    Option(
        "validation_resolution", "str", "1024",
        "Size of validation images: one number for a square, or WIDTHxHEIGHT; "
        "several sizes may be separated by commas.",
        VALIDATION, implemented=False,
    ),
    Option(
        "num_validation_images", "int", 1,
        "Images generated per validation prompt.",
        VALIDATION, minimum=1, implemented=False,
    ),
    Option(
        "validation_num_inference_steps", "int", 30,
        "Denoising steps used for each validation image.",
        VALIDATION, minimum=1, implemented=False,
    ),
    Option(
        "validation_guidance", "float", 7.5,
        "Classifier-free guidance scale for validation images.",
        VALIDATION, minimum=0, implemented=False,
    ),
    Option(
        "validation_seed", "int", None,
        "Seed for validation images, so that images from different steps can be "
        "compared.",
        VALIDATION, minimum=0, implemented=False,
    ),
    Option(
        "validation_torch_compile", "bool", False,
        "Compile the validation pipeline's denoiser with torch.compile.",
        VALIDATION, implemented=False,
    ),
    Option(
        "evaluation_type", "str", "none",
        "Score validation images against their prompts: clip computes CLIP "
        "scores, none skips scoring.",
        VALIDATION, choices=("none", "clip"), implemented=False,
    ),
    Option(
        "disable_benchmark", "bool", False,
        "Skip generating base-model images at step 0, which are otherwise shown "
        "beside later validation images for comparison.",
        VALIDATION, implemented=False,
    ),
    # ------------------------------------------------------------ Publishing
    Option(
        "push_to_hub", "bool", False,
        "Upload the finished model to the Hugging Face Hub when training ends.",
        PUBLISHING, implemented=False,
    ),
    Option(
        "push_checkpoints_to_hub", "bool", False,
        "With --push_to_hub, also upload every intermediate checkpoint.",
        PUBLISHING, implemented=False,
    ),
    Option(
        "hub_model_id", "str", None,
        "Name of the model repository on the Hub; also names the results folder "
        "inside --output_dir.",
        PUBLISHING, implemented=False,
    ),
    Option(
        "hub_token", "str", None,
        "Access token for uploading to the Hub. Never printed or saved.",
        PUBLISHING, implemented=False, secret=True,
    ),
    # -------------------------------------------------- Logging and tracking
    Option(
        "report_to", "list", ["none"],
        "Experiment trackers that receive metrics; list several separated by "
        "commas, or none.",
        LOGGING, choices=("tensorboard", "wandb", "comet_ml", "none"),
    ),
    Option(
        "logging_dir", "path", "logs",
        "Folder where tracker logs such as TensorBoard event files are written.",
        LOGGING,
    ),
    Option(
        "tracker_project_name", "str", "simpletuner",
        "Project name the run is filed under in the trackers.",
        LOGGING,
    ),
    Option(
        "tracker_run_name", "str", None,
        "Name of this run in the trackers. Unset lets the tracker choose one.",
        LOGGING,
    ),
    # ---------------------------------------------- Hardware and performance
    Option(
        "gradient_checkpointing", "bool", False,
        "Recompute activations during the backward pass instead of storing them: "
        "much less memory, somewhat slower steps.",
        HARDWARE,
    ),
    Option(
        "gradient_checkpointing_interval", "int", None,
        "Checkpoint only every n-th block (1 checkpoints them all, 2 every other "
        "one), trading some memory back for speed. Needs --gradient_checkpointing.",
        HARDWARE, minimum=1,
        applies_when=(CHECKPOINTING,),
    ),
    Option(
        "attention_mechanism", "str", "diffusers",
        "Attention implementation: diffusers (PyTorch SDPA), xformers, or "
        "sageattention (mainly for inference, see --sageattention_usage).",
        HARDWARE, choices=("diffusers", "xformers", "sageattention"), implemented=False,
    ),
    Option(
        "sageattention_usage", "str", "inference",
        "When SageAttention is used. Using it for training leaves the attention "
        "projections without gradients, so those layers do not learn.",
        HARDWARE, choices=("training", "inference", "training+inference"),
        implemented=False,
    ),
    Option(
        "fused_qkv_projections", "bool", False,
        "Merge the query, key and value projections of attention into one matmul. "
        "Needs H100/H200-class hardware with Flash Attention 3.",
        HARDWARE, implemented=False,
    ),
    Option(
        "memory_limit_gb", "float", None,
        "Memory in GiB the run may use, checked against the memory estimate before "
        "loading. Unset uses what the device reports free (system RAM when training "
        "on the CPU).",
        HARDWARE, minimum=0,
    ),
    Option(
        "skip_memory_check", "bool", False,
        "Start even when the memory estimate exceeds the memory available, instead "
        "of stopping before anything is loaded.",
        HARDWARE,
    ),
    # ------------------------------------------------------------ Run control
    Option(
        "print_config", "bool", False,
        "Print the fully resolved configuration, with secrets hidden, and exit.",
        RUN,
    ),
    Option(
        "estimate_memory", "bool", False,
        "Print the memory the run would need (parameters from the model's config and "
        "safetensors headers, no weights loaded), and exit.",
        RUN,
    ),
    Option(
        "list_model_families", "bool", False,
        "List the model families that can be trained, and exit.",
        RUN,
    ),
    Option(
        "cache_only", "bool", False,
        "Build every latent and text-embed cache, then exit without training.",
        RUN,
    ),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

# Settings that belong in config/config.env, read by train.sh before Python
# starts: (variable, default, help).  An empty default means unset.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    (
        "TRAINING_NUM_PROCESSES", "1",
        "Processes to launch, normally one per GPU; more than one trains with "
        "distributed data parallel.",
    ),
    (
        "TRAINING_DYNAMO_BACKEND", "no",
        "torch.compile backend for the trained model; inductor compiles it, no "
        "leaves it eager.",
    ),
    (
        "SIMPLETUNER_LOG_LEVEL", "INFO",
        "How much the trainer logs; DEBUG adds detail useful in bug reports.",
    ),
    (
        "VENV_PATH", ".venv",
        "Python virtual environment that train.sh activates.",
    ),
    (
        "ACCELERATE_EXTRA_ARGS", "",
        "Extra arguments passed to accelerate launch, such as --multi_gpu.",
    ),
    (
        "ENV", "",
        "Name of a configuration set: when given, the config is read from "
        "config/ENV/config.json instead of config/config.json.",
    ),
    (
        "CONFIG_BACKEND", "json",
        "Config file format to read: json or toml.",
    ),
    (
        "CONFIG_PATH", "",
        "Explicit path of the config file; overrides ENV. Without a .json or .toml "
        "extension, the CONFIG_BACKEND one is added unless a file of that exact name "
        "exists.",
    ),
)
