"""Stable Diffusion XL: two CLIP text encoders, a UNet with size/crop micro-conditioning."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders
from simpletuner.families.micro_conditioning import TextTimeConditioning
from simpletuner.families.micro_conditioning import size_crop_and_score_time_ids
from simpletuner.families.sdxl_stages import REFINER, StageSplit, render_stage, stage_split

logger = logging.getLogger(__name__)
REFINER_PIPELINE = "StableDiffusionXLImg2ImgPipeline"


class SDXLFamily(TextTimeConditioning, ModelFamily):
    # sample_conditioning (time_ids from each sample's real crop/size) and
    # model_inputs come from TextTimeConditioning, shared with Kolors.
    name = "sdxl"
    # Key prefixes by which a single-file checkpoint holds this family's denoiser (its original layout's label embedder, or diffusers' add_embedding).
    single_file_markers = ("model.diffusion_model.label_emb.", "label_emb.", "add_embedding.")
    # --model_flavour -> the base model it picks (SimpleTuner's names); the first is the default.
    flavours = {"base-1.0": "stabilityai/stable-diffusion-xl-base-1.0",
                "base-0.9": "stabilityai/stable-diffusion-xl-base-0.9"}
    pipeline_class_name = "StableDiffusionXLPipeline"
    denoiser_component = "unet"
    denoiser_class_name = "UNet2DConditionModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("BasicTransformerBlock", "ResnetBlock2D")
    # The attention projections, as diffusers' SDXL LoRA loader expects them.
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # Kept unquantised under --base_model_precision: the first and last
    # convolutions and the timestep/conditioning embedders, which are small and
    # whose precision every output depends on.
    quantisation_exclude = ("conv_in", "conv_out", "time_embedding*", "add_embedding*")
    # kohya names of the diffusers module paths; the SD/SDXL loaders convert them back.
    kohya_lora_prefix = "lora_unet"
    default_resolution = 1024
    text_components = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    latent_normalisation = "sdxl:scaling_factor"
    # Known fault of the stock SDXL VAE; madebyollin/sdxl-vae-fp16-fix is the usual fp16-safe replacement.
    vae_overflows_in_fp16 = True

    # True for a model in the SDXL refiner's layout (read from its model_index.json).
    refiner_layout = False
    # Whether a model_index.json said which layout the model has (not yet when it is still to be downloaded).
    layout_read = False

    def model_index_problem(self, index: dict[str, Any], overridden: set[str]) -> Optional[str]:
        # The SDXL refiner ships as an img2img pipeline that sets requires_aesthetics_score.
        if index.get("_class_name") == REFINER_PIPELINE and index.get("requires_aesthetics_score"):
            self._use_refiner_layout()
        self.layout_read = True
        return super().model_index_problem(index, overridden)

    def ignored_for_model(self) -> tuple[str, ...]:
        """The refiner-layout options, set for a model in SDXL base's layout, where they change nothing."""
        if self.refiner_layout or not self.layout_read or self.config is None:
            return ()
        from simpletuner.config.inert import no_effect_message
        from simpletuner.config.options import OPTIONS_BY_NAME

        why = {
            "data_aesthetic_score": "the model is in SDXL base's layout, whose micro-conditioning has the target "
                                    "size where the refiner's has an aesthetic score",
            "sdxl_refiner_uses_full_range": "the model is in SDXL base's layout, which trains every timestep "
                                            "already (--refiner_training picks a part)",
        }
        messages = []
        for name, reason in why.items():
            option, value = OPTIONS_BY_NAME[name], self.option(name, OPTIONS_BY_NAME[name].default)
            if value != option.default:
                messages.append(no_effect_message(option, value, reason))
        return tuple(messages)

    def _use_refiner_layout(self) -> None:
        """This instance trains a refiner-layout model: only the second text encoder, and an
        aesthetic score where SDXL base has the target size in the micro-conditioning."""
        self.refiner_layout = True
        self.pipeline_class_name = REFINER_PIPELINE
        self.text_components = ("text_encoder_2", "tokenizer_2")
        self.time_id_count = 5

    def sample_conditioning(self, samples: list) -> dict[str, torch.Tensor]:
        if not self.refiner_layout:
            return super().sample_conditioning(samples)
        return {"time_ids": size_crop_and_score_time_ids(samples, self.option("data_aesthetic_score", 7.0))}

    def pipeline_settings(self) -> dict[str, Any]:
        return {"requires_aesthetics_score": True} if self.refiner_layout else {}

    def stage(self) -> "StageSplit | None":
        """The part of the schedule this run trains (--refiner_training), or None for all of it."""
        return stage_split(self.config, self.refiner_layout) if self.config is not None else None

    def make_objective(self, noise_scheduler: Any, config: Any) -> Any:
        from simpletuner.training.objectives import DiffusionObjective

        split = self.stage()
        if split is None:
            return DiffusionObjective(noise_scheduler, config)
        num_timesteps = noise_scheduler.config.num_train_timesteps
        logger.info("%s", split.describe(num_timesteps))
        return DiffusionObjective(noise_scheduler, config, timestep_window=split.timesteps(num_timesteps))

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        tokenizers = [source.load(CLIPTokenizer, "tokenizer_2")]
        encoders = [source.load(CLIPTextModelWithProjection, "text_encoder_2")]
        if not self.refiner_layout:  # the refiner has only the second encoder
            tokenizers.insert(0, source.load(CLIPTokenizer, "tokenizer"))
            encoders.insert(0, source.load(CLIPTextModel, "text_encoder"))
        for encoder in encoders:
            encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=tokenizers, encoders=encoders)

    # CLIP's attention projections in both encoders, as diffusers' SDXL
    # train_dreambooth_lora script (and kohya) train them under --train_text_encoder.
    text_encoder_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            embeds = self.trainable_text_embeds(text, prompts)
        return [{name: value[i].cpu() for name, value in embeds.items()} for i in range(len(prompts))]

    def trainable_text_embeds(self, text: TextEncoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        # The pipeline's own encode_prompt guarantees training sees exactly
        # the embeddings inference will produce (penultimate hidden states of
        # both encoders, pooled output of the second; the refiner's one encoder
        # alone); it keeps gradients, so trained encoders (--train_text_encoder)
        # learn through it.
        first = (None, None) if self.refiner_layout else (text.encoders[0], text.tokenizers[0])
        pipeline = self.pipeline_class()(
            vae=None,
            text_encoder=first[0],
            text_encoder_2=text.encoders[-1],
            tokenizer=first[1],
            tokenizer_2=text.tokenizers[-1],
            unet=None,
            scheduler=None,
        )
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, device=text.encoders[-1].device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        inputs = super().validation_inputs(positive, negative)
        inputs["guidance_rescale"] = self.option("validation_guidance_rescale", 0.0)
        if self.refiner_layout:  # the score the model was trained with
            inputs["aesthetic_score"] = self.option("data_aesthetic_score", 7.0)
        return inputs

    def validation_pipeline_class(self) -> Any:
        # A refiner stage continues another stage's latents: diffusers does that in img2img.
        split = self.stage()
        if split is not None and split.stage == REFINER:
            import diffusers

            return getattr(diffusers, REFINER_PIPELINE)
        return self.pipeline_class()

    def render_validation(self, pipeline: Any, inputs: dict[str, Any]) -> Any:
        split = self.stage()
        if split is None and not self.refiner_layout:
            return super().render_validation(pipeline, inputs)
        return render_stage(pipeline, inputs, split, img2img=type(pipeline).__name__ == REFINER_PIPELINE)


FAMILY_CLASS = SDXLFamily
