"""Stable Diffusion XL: two CLIP text encoders, a UNet with size/crop micro-conditioning."""

from __future__ import annotations


from typing import Any

import torch

from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders
from simpletuner.families.micro_conditioning import TextTimeConditioning


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

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        tokenizers = [source.load(CLIPTokenizer, "tokenizer"), source.load(CLIPTokenizer, "tokenizer_2")]
        encoders = [
            source.load(CLIPTextModel, "text_encoder"),
            source.load(CLIPTextModelWithProjection, "text_encoder_2"),
        ]
        for encoder in encoders:
            encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=tokenizers, encoders=encoders)

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        # The pipeline's own encode_prompt guarantees training sees exactly
        # the embeddings inference will produce (penultimate hidden states of
        # both encoders, pooled output of the second).
        pipeline = self.pipeline_class()(
            vae=None,
            text_encoder=text.encoders[0],
            text_encoder_2=text.encoders[1],
            tokenizer=text.tokenizers[0],
            tokenizer_2=text.tokenizers[1],
            unet=None,
            scheduler=None,
        )
        device = text.encoders[0].device
        with torch.no_grad():
            embeds, _, pooled, _ = pipeline.encode_prompt(
                prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        return [
            {"prompt_embeds": embeds[i].cpu(), "pooled_prompt_embeds": pooled[i].cpu()}
            for i in range(len(prompts))
        ]


    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        inputs = super().validation_inputs(positive, negative)
        inputs["guidance_rescale"] = self.option("validation_guidance_rescale", 0.0)
        return inputs


FAMILY_CLASS = SDXLFamily
