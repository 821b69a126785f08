"""Options: checkpoints, validation, publishing, logging and tracking."""

from __future__ import annotations

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    CHECKPOINTS,
    LOGGING,
    EVAL_DATASET,
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
        VALIDATION, minimum=1,
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
        VALIDATION, implemented=False,
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
)
