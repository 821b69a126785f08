"""Options: checkpoints, validation, publishing, logging and tracking."""

from __future__ import annotations

from simpletuner.config.option import AppliesWhen, Option
from simpletuner.config.options.common import (
    CHECKPOINTS,
    DIFFUSION_FAMILIES,
    LOGGING,
    EVAL_DATASET,
    LYCORIS,
    PUBLISHING,
    PUSHING,
    VALIDATION,
)

OPTIONS: tuple[Option, ...] = (
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
        "Prompt for sample images generated during training (shortname "
        "validation). Validation runs when this or a prompt library gives at "
        "least one prompt.",
        VALIDATION,
    ),
    Option(
        "validation_negative_prompt", "str", "blurry, cropped, ugly",
        "Negative prompt used for validation images (the unconditional half of "
        "classifier-free guidance).",
        VALIDATION,
    ),
    Option(
        "user_prompt_library", "path", None,
        "JSON file mapping shortnames to prompts, each rendered at every "
        "validation and named by its shortname.",
        VALIDATION,
    ),
    Option(
        "validation_prompt_library", "bool", False,
        "Also render the built-in library of test prompts (portraits, scenes, "
        "text, objects) at every validation.",
        VALIDATION,
    ),
    Option(
        "validation_using_datasets", "bool", False,
        "Also render the caption of one image from each training dataset "
        "(chosen once from the seed), named after the dataset.",
        VALIDATION,
    ),
    Option(
        "validation_disable_unconditional", "bool", False,
        "Skip the extra image rendered from the empty prompt at every "
        "validation (shortname unconditional), which shows what the model draws "
        "with no text; saves time with a single prompt.",
        VALIDATION,
    ),
    Option(
        "validation_steps", "int", 100,
        "Generate validation images every this many optimizer steps (at each "
        "multiple of it, so a resumed run keeps the same steps).",
        VALIDATION, minimum=1,
    ),
    Option(
        "validation_on_startup", "bool", False,
        "Also validate before the first training step (or at the step a "
        "resumed run starts from).",
        VALIDATION,
    ),
    Option(
        "validation_resolution", "str", "1024",
        "Size of validation images: one number for a square, or WIDTHxHEIGHT; "
        "several sizes may be separated by commas, and every prompt is rendered "
        "at each.",
        VALIDATION,
    ),
    Option(
        "num_validation_images", "int", 1,
        "Images generated per validation prompt and resolution, with seeds "
        "counting up from --validation_seed.",
        VALIDATION, minimum=1,
    ),
    Option(
        "validation_num_inference_steps", "int", 30,
        "Denoising steps used for each validation image.",
        VALIDATION, minimum=1,
    ),
    Option(
        "validation_guidance", "float", 7.5,
        "Classifier-free guidance scale for validation images (for flux, the "
        "guidance value the model embeds).",
        VALIDATION, minimum=0,
    ),
    Option(
        "validation_guidance_real", "float", 1.0,
        "Real classifier-free guidance for flux validation images, with "
        "--validation_negative_prompt; 1.0 turns it off. Each step then runs "
        "the model twice.",
        VALIDATION, minimum=1, families=("flux",),
    ),
    Option(
        "validation_no_cfg_until_timestep", "int", 2,
        "With --validation_guidance_real, the first this many denoising steps "
        "run without it.",
        VALIDATION, minimum=0, families=("flux",),
        applies_when=(AppliesWhen("validation_guidance_real", (1, 1.0), "--validation_guidance_real is 1.0, "
                                  "so no real guidance runs", unless=True),),
    ),
    Option(
        "validation_guidance_rescale", "float", 0.0,
        "Rescale guided predictions toward the unguided one's spread (0 is off, "
        "0.7 is common for zero-terminal-SNR models).",
        VALIDATION, minimum=0, maximum=1, families=("sdxl", "legacy"),
    ),
    Option(
        "validation_guidance_skip_layers", "list", None,
        "SD3 skip-layer guidance: indices of the transformer blocks left out of "
        "an extra guidance pass (SD 3.5 Medium uses 7,8,9). Unset turns it off.",
        VALIDATION, families=("sd3",),
    ),
    Option(
        "validation_guidance_skip_layers_start", "float", 0.01,
        "Fraction of the denoising steps after which skip-layer guidance starts.",
        VALIDATION, minimum=0, maximum=1, families=("sd3",),
    ),
    Option(
        "validation_guidance_skip_layers_stop", "float", 0.2,
        "Fraction of the denoising steps after which skip-layer guidance stops.",
        VALIDATION, minimum=0, maximum=1, families=("sd3",),
    ),
    Option(
        "validation_guidance_skip_scale", "float", 2.8,
        "Strength of skip-layer guidance.",
        VALIDATION, minimum=0, families=("sd3",),
    ),
    Option(
        "validation_noise_scheduler", "str", None,
        "Sampler for validation images; unset uses the one the model ships "
        "with.",
        VALIDATION, choices=("ddim", "ddpm", "euler", "euler-a", "unipc"), families=DIFFUSION_FAMILIES,
    ),
    Option(
        "validation_seed", "int", None,
        "Seed of the first validation image (the next images count up from "
        "it), so that images from different steps can be compared. Unset uses "
        "--seed.",
        VALIDATION, minimum=0,
    ),
    Option(
        "validation_randomize", "bool", False,
        "Draw fresh seeds at every validation instead of repeating "
        "--validation_seed; file names still record each seed.",
        VALIDATION,
    ),
    Option(
        "validation_torch_compile", "bool", False,
        "Compile the validation pipeline's denoiser with torch.compile (pays "
        "off only when validations are many and large).",
        VALIDATION,
    ),
    Option(
        "validation_lycoris_strength", "float", 1.0,
        "Multiplier of the LyCORIS network while validation images render "
        "(training is unaffected).",
        VALIDATION, minimum=0, applies_when=(LYCORIS,),
    ),
    Option(
        "eval_dataset_id", "str", None,
        "Id of an image dataset in --data_backend_config to hold out: it is cached but "
        "never trained on, and at every --validation_steps (and before the first step) "
        "its mean loss at fixed noise and timesteps is logged as eval/loss. Unset: no "
        "evaluation loss.",
        VALIDATION,
    ),
    Option(
        "num_eval_images", "int", 4,
        "How many images of --eval_dataset_id the evaluation loss uses (the first by "
        "path); each is evaluated at four fixed timesteps, one per quarter of the "
        "schedule.",
        VALIDATION, minimum=1, applies_when=(EVAL_DATASET,),
    ),
    Option(
        "disable_benchmark", "bool", False,
        "Skip generating base-model images at step 0, which are otherwise shown "
        "beside later validation images for comparison.",
        VALIDATION,
    ),
    Option(
        "evaluation_type", "str", "none",
        "Score validation images against their prompts: clip computes CLIP "
        "scores, none skips scoring.",
        VALIDATION, choices=("none", "clip"),
    ),
    Option(
        "pretrained_evaluation_model_name_or_path", "str", "openai/clip-vit-large-patch14",
        "The CLIP model (Hub id or local folder) that --evaluation_type clip "
        "scores with.",
        VALIDATION, applies_when=(AppliesWhen("evaluation_type", ("clip",), "only --evaluation_type clip uses it"),),
    ),
    # ------------------------------------------------------------ Publishing
    Option(
        "push_to_hub", "bool", False,
        "Upload the final weights, the model card and the latest validation images "
        "to the Hugging Face Hub when training ends (in the background; the run waits "
        "for it before exiting). The token is checked before anything loads.",
        PUBLISHING,
    ),
    Option(
        "push_checkpoints_to_hub", "bool", False,
        "With --push_to_hub, also upload every checkpoint as it is written, to "
        "checkpoints/checkpoint-STEP/ in the repository, while training goes on.",
        PUBLISHING, applies_when=(PUSHING,),
    ),
    Option(
        "hub_model_id", "str", None,
        "Name of the model repository on the Hub (user/name, or name for your own "
        "account); also names the results folder inside --output_dir, where this "
        "run's checkpoints, weights and model card go.",
        PUBLISHING,
    ),
    Option(
        "hub_token", "str", None,
        "Access token for uploading to the Hub; unset uses HF_TOKEN or the token "
        "saved by hf auth login. Never printed or saved.",
        PUBLISHING, secret=True, applies_when=(PUSHING,),
    ),
    Option(
        "model_card_note", "str", None,
        "Text put at the top of the model card (README.md in the results folder).",
        PUBLISHING,
    ),
    Option(
        "model_card_safe_for_work", "bool", False,
        "Leave out the not-for-all-audiences tag the model card otherwise carries, "
        "for models whose outputs are safe for work.",
        PUBLISHING,
    ),
    Option(
        "webhook_config", "path", None,
        "JSON file naming a Discord webhook (webhook_url) or a raw JSON endpoint "
        "(webhook_type raw, callback_url) that is told when training starts, at each "
        "validation and checkpoint, when it finishes and when it fails. The URL is "
        "treated as a secret.",
        PUBLISHING,
    ),
    Option(
        "webhook_reporting_interval", "int", None,
        "Also post the step, loss and learning rate every this many optimizer steps "
        "to raw webhooks (Discord webhooks only get the events).",
        PUBLISHING, minimum=1,
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
    Option(
        "tracker_image_layout", "str", "gallery",
        "How wandb shows validation images: gallery (one image panel per "
        "prompt) or table (one row per image with its prompt, size and seed).",
        LOGGING, choices=("gallery", "table"),
    ),
)
