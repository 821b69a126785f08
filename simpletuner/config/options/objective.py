"""Options: loss, noise, flow matching and EMA."""

from __future__ import annotations

from simpletuner.config.option import AppliesWhen, Option
from simpletuner.config.options.common import (
    BIAS_PORTION,
    BIAS_RANGE,
    BETA_SCHEDULE,
    BIAS_STRATEGY,
    DIFFUSION_FAMILIES,
    EMA,
    FIXED_SHIFT,
    FLOW,
    FLOW_FAMILIES,
    GUIDANCE_CONSTANT,
    GUIDANCE_RANGE,
    HUBER_LOSS,
    LOGIT_NORMAL,
    LOSS,
    MODE_SCHEME,
    NOISE_OFFSET,
    RESOLUTION_SHIFTING,
    SOFT_MIN_SNR,
    UNWEIGHTED_BY_SNR,
    UNWEIGHTED_BY_SOFT_MIN_SNR,
)

OPTIONS: tuple[Option, ...] = (
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
        "loss_type", "str", "l2",
        "What the prediction's error costs: l2 (squared error), or the pseudo-Huber "
        "losses huber and smooth_l1, which grow linearly for large errors and so "
        "are less pulled by outliers (Khrapov et al. 2024).",
        LOSS, choices=("l2", "huber", "smooth_l1"),
    ),
    Option(
        "huber_schedule", "str", "snr",
        "How the Huber loss's c follows the timestep: snr (near 1, L2-like, for "
        "clean steps; --huber_c for noisy ones), exponential (1 at timestep 0 "
        "down to --huber_c at the last), or constant (--huber_c throughout).",
        LOSS, choices=("snr", "exponential", "constant"),
        applies_when=(HUBER_LOSS,),
    ),
    Option(
        "huber_c", "float", 0.1,
        "The Huber loss's c: errors much larger than it cost linearly. The value "
        "the schedule reaches at the noisiest timesteps.",
        LOSS, minimum=0.0001, maximum=1,
        applies_when=(HUBER_LOSS,),
    ),
    Option(
        "snr_weight", "float", 1.0,
        "Multiply the loss by this factor, as SimpleTuner v1 did where no "
        "(soft) min-SNR weighting is used; 1 leaves it as is.",
        LOSS, minimum=0,
        applies_when=(UNWEIGHTED_BY_SNR, UNWEIGHTED_BY_SOFT_MIN_SNR),
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
        "flux_use_beta_schedule", "bool", False,
        "Draw flow-matching sigmas from a Beta distribution "
        "(--flux_beta_schedule_alpha, --flux_beta_schedule_beta) instead of "
        "the --flow_weighting_scheme's draw; its loss weighting still applies.",
        FLOW,
        families=FLOW_FAMILIES,
    ),
    Option(
        "flux_beta_schedule_alpha", "float", 2.0,
        "The alpha of the Beta distribution of --flux_use_beta_schedule; above "
        "--flux_beta_schedule_beta favours noisier steps.",
        FLOW, minimum=0.0001,
        families=FLOW_FAMILIES,
        applies_when=(BETA_SCHEDULE,),
    ),
    Option(
        "flux_beta_schedule_beta", "float", 2.0,
        "The beta of the Beta distribution of --flux_use_beta_schedule; above "
        "--flux_beta_schedule_alpha favours cleaner steps.",
        FLOW, minimum=0.0001,
        families=FLOW_FAMILIES,
        applies_when=(BETA_SCHEDULE,),
    ),
    Option(
        "flux_use_uniform_schedule", "bool", False,
        "Draw flow-matching sigmas uniformly from [0, 1] whatever the "
        "--flow_weighting_scheme (whose loss weighting still applies).",
        FLOW,
        families=FLOW_FAMILIES,
    ),
    Option(
        "flow_matching_sigmoid_scale", "float", 1.0,
        "Scale of the logit before the sigmoid in the logit_normal draw: sigmas "
        "are sigmoid(scale * z) with z ~ N(--flow_logit_mean, --flow_logit_std). "
        "Above 1 favours the ends of the schedule, below 1 its middle.",
        FLOW, minimum=0,
        families=FLOW_FAMILIES,
        applies_when=(LOGIT_NORMAL,),
    ),
    Option(
        "flux_guidance_mode", "str", "constant",
        "Guidance value fed to Flux's guidance embedding while training: constant "
        "(--flux_guidance_value) or random-range (drawn per sample, uniformly "
        "between --flux_guidance_min and --flux_guidance_max).",
        FLOW, choices=("constant", "random-range"),
        families=("flux",),
    ),
    Option(
        "flux_guidance_value", "float", 1.0,
        "Value fed to Flux's guidance embedding while training (--flux_guidance_mode constant).",
        FLOW, minimum=0,
        families=("flux",),
        applies_when=(GUIDANCE_CONSTANT,),
    ),
    Option(
        "flux_guidance_min", "float", 0.0,
        "Lowest guidance value of --flux_guidance_mode random-range.",
        FLOW, minimum=0,
        families=("flux",),
        applies_when=(GUIDANCE_RANGE,),
    ),
    Option(
        "flux_guidance_max", "float", 4.0,
        "Highest guidance value of --flux_guidance_mode random-range.",
        FLOW, minimum=0,
        families=("flux",),
        applies_when=(GUIDANCE_RANGE,),
    ),
    Option(
        "flux_attention_masked_training", "bool", False,
        "Hide the padding tokens of the T5 prompt from Flux's attention while "
        "training (the T5 mask is cached with the embeds). Validation images "
        "are rendered masked too, except with real CFG "
        "(--validation_guidance_real above 1), which renders unmasked.",
        FLOW,
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
        "Which weights validation images use with --use_ema: none (the trained "
        "weights only), ema_only, or comparison (both; the EMA images are named "
        "with -ema after the shortname).",
        EMA, choices=("none", "ema_only", "comparison"),
        applies_when=(AppliesWhen("use_ema", (True,), "only --use_ema keeps EMA weights"),),
    ),
)
