"""Options: core model, its components, precision and quantisation."""

from __future__ import annotations

from simpletuner.config.option import Option
from simpletuner.config.options.common import (
    BASE_MODEL_PRECISIONS,
    BF16_COMPUTE,
    COMPONENTS,
    CORE,
    ENCODER_FREEZE_STRATEGIES,
    FREEZING_ENCODER,
    FROZEN_BASE,
    FULL_RUN,
    MODEL_FAMILIES,
    PRECISION,
    REFINING,
    SDXL_ONLY,
    T5_FAMILIES,
    TRAIN_TE,
)
from simpletuner.config.options.compat import FAMILY_SPELLINGS
from simpletuner.families.registry import available_families

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
        CORE, choices=MODEL_FAMILIES, implemented=available_families(), aliases=FAMILY_SPELLINGS,
    ),
    Option(
        "pretrained_model_name_or_path", "path", None,
        "The base model to start from: a Hugging Face Hub id, a local folder in "
        "diffusers layout, or a single-file .safetensors checkpoint (sdxl, legacy, sd3, flux; "
        "see --single_file_config and documentation/SINGLE_FILES.md). Unset: the "
        "--model_flavour's model.",
        CORE,
    ),
    Option(
        "model_flavour", "str", None,
        "A named variant of the family (SimpleTuner's names, e.g. flux dev or schnell, sd3 "
        "medium or large, sdxl base-1.0, legacy 1.5 or 2.1) that picks the base model when "
        "--pretrained_model_name_or_path is not given, and the configs of a single-file checkpoint.",
        CORE,
    ),
    Option(
        "single_file_config", "path", None,
        "For a single-file --pretrained_model_name_or_path (model.safetensors): the diffusers "
        "model folder or Hub id of the same family whose configs, tokenizers, scheduler and "
        "missing components (e.g. Flux's text encoders) go with it. Unset: the --model_flavour's "
        "model (the family's default flavour when none is set).",
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
        "Train one stage of a two-model (mixture-of-experts) chain in which each "
        "model handles its own part of the noise schedule, as SDXL base and refiner "
        "do: the refiner stage (the default) trains timesteps below "
        "round(1000 x --refiner_training_strength), the base stage "
        "(--refiner_training_invert_schedule) the rest. Validation images run the "
        "stage through diffusers' denoising_start/denoising_end. sdxl only; see "
        "documentation/MIXTURE_OF_EXPERTS.md.",
        CORE,
    ),
    Option(
        "refiner_training_strength", "float", 0.2,
        "Share of the noise schedule the refiner stage owns, from the clean end: 0.2 "
        "trains timesteps 199..0 (SDXL's refiner), 0.35 trains 349..0 and leaves "
        "999..350 to the base stage. The stages meet at denoising_end = "
        "denoising_start = 1 - strength.",
        CORE, minimum=0.001, maximum=0.999, applies_when=(SDXL_ONLY,),
    ),
    Option(
        "refiner_training_invert_schedule", "bool", False,
        "Train the base (first, high-noise) stage instead: timesteps from "
        "round(1000 x --refiner_training_strength) up to 999.",
        CORE, applies_when=(REFINING,),
    ),
    Option(
        "sdxl_refiner_uses_full_range", "bool", False,
        "A model in the SDXL refiner's layout trains only its design range (the last "
        "--refiner_training_strength of the schedule) unless this is set; with it, "
        "every timestep trains (e.g. to turn the refiner into a text-to-image model).",
        CORE, applies_when=(SDXL_ONLY,),
    ),
    Option(
        "data_aesthetic_score", "float", 7.0,
        "The aesthetic score an SDXL-refiner-layout model is conditioned on for every "
        "training sample (its micro-conditioning has a score where SDXL base has the "
        "target size); validation uses the same score.",
        CORE, applies_when=(SDXL_ONLY,),
    ),
    # ------------------------------------------------------ Model components
    Option(
        "train_text_encoder", "bool", False,
        "Train the text encoder(s) with the denoiser, at --text_encoder_lr: a LoRA "
        "on them under --model_type lora (as diffusers' train_dreambooth_lora "
        "does; the saved LoRA holds their part, which load_lora_weights loads), "
        "their own weights under --model_type full (see --save_text_encoder). "
        "Captions are then encoded every step instead of cached. legacy and sdxl "
        "(both of SDXL's encoders); a LoRA needs --lora_type standard; one process, "
        "no validation prompts or --eval_dataset_id. As in SimpleTuner, "
        "--text_encoder_limit and --freeze_encoder limit how much they train.",
        COMPONENTS,
    ),
    Option(
        "text_encoder_limit", "int", 25,
        "Percentage of the run's optimizer steps during which the text encoders "
        "train (the first ones, rounded up); after that they are frozen and the "
        "denoiser trains on alone. 100 trains them throughout. SimpleTuner's default.",
        COMPONENTS, minimum=1, maximum=100, applies_when=(TRAIN_TE,),
    ),
    Option(
        "freeze_encoder", "bool", True,
        "Keep some transformer layers of the trained text encoders frozen, chosen "
        "by --freeze_encoder_strategy (with a LoRA, its weights in those layers do "
        "not train). On by default as in SimpleTuner: its defaults freeze the layers "
        "after 17, which leaves a 12-layer encoder (SD 1.x) whole.",
        COMPONENTS, applies_when=(TRAIN_TE,),
    ),
    Option(
        "freeze_encoder_strategy", "str", "after",
        "Which text-encoder layers --freeze_encoder freezes (counted from 0): before "
        "(those before --freeze_encoder_before), after (those after "
        "--freeze_encoder_after), between (from before to after, both included) or "
        "outside (all but those from before to after).",
        COMPONENTS, choices=ENCODER_FREEZE_STRATEGIES, applies_when=(TRAIN_TE, FREEZING_ENCODER),
    ),
    Option(
        "freeze_encoder_before", "int", 12,
        "First unfrozen text-encoder layer for --freeze_encoder_strategy before; "
        "start of the range for between/outside.",
        COMPONENTS, minimum=0, applies_when=(TRAIN_TE, FREEZING_ENCODER),
    ),
    Option(
        "freeze_encoder_after", "int", 17,
        "Last unfrozen text-encoder layer for --freeze_encoder_strategy after; end of "
        "the range for between/outside.",
        COMPONENTS, minimum=0, applies_when=(TRAIN_TE, FREEZING_ENCODER),
    ),
    Option(
        "save_text_encoder", "bool", False,
        "With --model_type full and --train_text_encoder, write the trained text "
        "encoders into the saved pipeline folder (without it the folder keeps the "
        "base model's, as in SimpleTuner). A LoRA run always saves the text "
        "encoders' LoRA in its LoRA file.",
        COMPONENTS, applies_when=(TRAIN_TE, FULL_RUN),
    ),
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
    Option(
        "t5_padding", "str", "unmodified",
        "What the T5 embeddings of a prompt's padding tokens hold: unmodified "
        "(what T5 outputs for them, as the pipelines use it) or zero.",
        COMPONENTS, choices=("unmodified", "zero"),
        families=("sd3", "flux", "pixart_sigma"),
    ),
    Option(
        "tokenizer_max_length", "int", None,
        "How many T5 tokens of each prompt are kept (longer prompts are cut, "
        "shorter ones padded). Unset: the pipeline's default, 256 for SD3, 512 "
        "for Flux, 300 for PixArt-Sigma.",
        COMPONENTS, minimum=1, maximum=512,
        families=("sd3", "flux", "pixart_sigma"),
    ),
    Option(
        "sd3_clip_uncond_behaviour", "str", "empty_string",
        "What SD3's CLIP embeddings (and pooled projection) are for the empty "
        "prompt that caption dropout trains with: the empty string's encoding, "
        "or zeros.",
        COMPONENTS, choices=("empty_string", "zero"),
        families=("sd3",),
    ),
    Option(
        "sd3_t5_uncond_behaviour", "str", None,
        "What SD3's T5 embeddings are for the empty prompt: the empty string's "
        "encoding, or zeros. Unset: as --sd3_clip_uncond_behaviour.",
        COMPONENTS, choices=("empty_string", "zero"),
        families=("sd3",),
    ),
    # -------------------------------------------- Precision and quantisation
    Option(
        "mixed_precision", "str", "bf16",
        "Number format used for the forward and backward passes: bf16, fp16 (with "
        "loss scaling; needs a CUDA or other accelerator), or no for plain fp32.",
        PRECISION, choices=("no", "bf16", "fp16"),
    ),
    Option(
        "disable_tf32", "bool", False,
        "Keep fp32 matrix products and convolutions in full fp32 on NVIDIA GPUs "
        "(Ampere or newer) instead of TF32, which is faster and on by default.",
        PRECISION,
    ),
    Option(
        "allow_tf32", "bool", False,
        "Let fp32 matrix products and convolutions use TF32 on NVIDIA GPUs. TF32 "
        "is already on unless --disable_tf32; kept for SimpleTuner v1 configs.",
        PRECISION,
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
)
