"""Kolors: the ChatGLM3 text encoder and an SDXL-style UNet with a text projection.

ChatGLM's penultimate hidden states are the token embeddings (the UNet's
``encoder_hid_proj`` maps them to its cross-attention width) and the last
token's final hidden state is the pooled vector; with the six size/crop
numbers it forms SDXL's ``text_time`` added embedding.  Text encoder and
tokenizer are the classes diffusers ships in ``diffusers.pipelines.kolors``.
"""

from __future__ import annotations


import torch

from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders
from simpletuner.families.micro_conditioning import TextTimeConditioning


class KolorsFamily(TextTimeConditioning, ModelFamily):
    # sample_conditioning (time_ids) and model_inputs come from TextTimeConditioning.
    name = "kolors"
    # --model_flavour -> the base model it picks (SimpleTuner's names).
    flavours = {"1.0": "Kwai-Kolors/Kolors-diffusers"}
    pipeline_class_name = "KolorsPipeline"
    denoiser_component = "unet"
    denoiser_class_name = "UNet2DConditionModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("BasicTransformerBlock", "ResnetBlock2D")
    # The attention projections; KolorsPipeline.load_lora_weights
    # (StableDiffusionLoraLoaderMixin) maps them onto the UNet.
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # Kept unquantised under --base_model_precision: the first and last
    # convolutions and the timestep/conditioning embedders, which are small and
    # whose precision every output depends on.
    quantisation_exclude = ("conv_in", "conv_out", "time_embedding*", "add_embedding*", "encoder_hid_proj")
    # kohya names of the diffusers module paths; the SD/SDXL loaders convert them back.
    kohya_lora_prefix = "lora_unet"
    default_resolution = 1024
    text_components = ("text_encoder", "tokenizer")
    latent_normalisation = "kolors:scaling_factor"
    # Kolors ships the SDXL VAE, with its fp16 overflow.
    vae_overflows_in_fp16 = True
    # KolorsPipeline's default and maximum prompt length.
    max_sequence_length = 256

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer

        encoder = source.load(ChatGLMModel, "text_encoder")
        encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=[source.load(ChatGLMTokenizer, "tokenizer")], encoders=[encoder])

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        # The pipeline's own encode_prompt: left-padded to 256 tokens,
        # penultimate hidden states as embeds, last token's final state pooled.
        pipeline = self.pipeline_class()(
            vae=None, text_encoder=text.encoders[0], tokenizer=text.tokenizers[0], unet=None, scheduler=None
        )
        with torch.no_grad():
            embeds, _, pooled, _ = pipeline.encode_prompt(
                prompt=prompts, device=text.encoders[0].device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            )
        return [
            {"prompt_embeds": embeds[i].cpu(), "pooled_prompt_embeds": pooled[i].cpu()}
            for i in range(len(prompts))
        ]



FAMILY_CLASS = KolorsFamily
