"""Stable Diffusion 3 / 3.5: CLIP-L, CLIP-G and T5 encoders, an MMDiT, flow matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simpletuner.families.base import FlowMatchingFamily, ModelSource, TextEncoders
from simpletuner.families.t5_prompts import settings_identity, t5_attention_mask, t5_length, zero_padding
from simpletuner.training.lora_formats import adapter_metadata


class SD3Family(FlowMatchingFamily):
    name = "sd3"
    # Key prefixes by which a single-file checkpoint holds this family's denoiser (the MMDiT's joint blocks, or diffusers' pos_embed).
    single_file_markers = ("model.diffusion_model.joint_blocks.", "joint_blocks.", "pos_embed.pos_embed")
    # --model_flavour -> the base model it picks (SimpleTuner's names); the first is the default.
    flavours = {"medium": "stabilityai/stable-diffusion-3.5-medium", "large": "stabilityai/stable-diffusion-3.5-large"}
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_component = "transformer"
    denoiser_class_name = "SD3Transformer2DModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("JointTransformerBlock",)
    # The joint-attention projections of every MMDiT block (image and text
    # streams), the set diffusers' SD3 LoRA scripts train and its loader maps.
    default_lora_targets = (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    )
    # Kept unquantised under --base_model_precision: the input and output
    # projections, the final adaptive norm and the timestep/text embedders.
    quantisation_exclude = ("pos_embed*", "context_embedder", "time_text_embed*", "norm_out*", "proj_out")
    default_resolution = 1024
    text_components = (
        "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3",
    )
    t5_components = ("text_encoder_3", "tokenizer_3")
    latent_normalisation = "sd3:shift_factor,scaling_factor"
    # encode_prompt's default, what the pipeline uses at inference (--tokenizer_max_length changes it).
    max_sequence_length = 256
    # Options that change the cached text embeds, with their defaults.
    text_setting_defaults = {"t5_padding": "unmodified", "tokenizer_max_length": None,
                             "sd3_clip_uncond_behaviour": "empty_string", "sd3_t5_uncond_behaviour": None}

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        tokenizers = [
            source.load(CLIPTokenizer, "tokenizer"),
            source.load(CLIPTokenizer, "tokenizer_2"),
            source.load(T5TokenizerFast, "tokenizer_3"),
        ]
        encoders = [
            source.load(CLIPTextModelWithProjection, "text_encoder"),
            source.load(CLIPTextModelWithProjection, "text_encoder_2"),
            source.load(T5EncoderModel, "text_encoder_3"),
        ]
        for encoder in encoders:
            encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=tokenizers, encoders=encoders)

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        # The pipeline's encode_prompt: penultimate hidden states of both CLIP
        # encoders (concatenated, zero-padded to T5's width) followed by T5's
        # tokens; pooled = both CLIP projections.  The CLIP and T5 parts are
        # cached apart so --sd3_skip_t5 can zero the T5 part while training.
        pipeline = self.pipeline_class()(
            transformer=None, scheduler=None, vae=None,
            text_encoder=text.encoders[0], tokenizer=text.tokenizers[0],
            text_encoder_2=text.encoders[1], tokenizer_2=text.tokenizers[1],
            text_encoder_3=text.encoders[2], tokenizer_3=text.tokenizers[2],
        )
        device = text.encoders[0].device
        length = t5_length(self.option, self.max_sequence_length)
        with torch.no_grad():
            embeds, _, pooled, _ = pipeline.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=length,
            )
        clip_tokens = embeds.shape[1] - length
        clip, t5 = embeds[:, :clip_tokens], embeds[:, clip_tokens:]
        if self.option("t5_padding", "unmodified") == "zero":
            t5 = zero_padding(t5, t5_attention_mask(text.tokenizers[2], prompts, length))
        entries = [
            {"clip_prompt_embeds": clip[i].cpu(), "t5_prompt_embeds": t5[i].cpu(), "pooled_prompt_embeds": pooled[i].cpu()}
            for i in range(len(prompts))
        ]
        for prompt, entry in zip(prompts, entries):
            if prompt == "":
                self._unconditional(entry)
        return entries

    def _unconditional(self, entry: dict[str, torch.Tensor]) -> None:
        """--sd3_clip_uncond_behaviour / --sd3_t5_uncond_behaviour: the empty prompt's
        embeds (what caption dropout trains with) as encoded, or zeros.

        The T5 behaviour follows the CLIP one unless set.  Zero CLIP embeds include
        the pooled projection, which only the CLIP encoders make.
        """
        clip = self.option("sd3_clip_uncond_behaviour", "empty_string")
        t5 = self.option("sd3_t5_uncond_behaviour", None) or clip
        if clip == "zero":
            entry["clip_prompt_embeds"] = torch.zeros_like(entry["clip_prompt_embeds"])
            entry["pooled_prompt_embeds"] = torch.zeros_like(entry["pooled_prompt_embeds"])
        if t5 == "zero":
            entry["t5_prompt_embeds"] = torch.zeros_like(entry["t5_prompt_embeds"])

    def text_settings(self) -> str:
        return settings_identity(self.option, self.text_setting_defaults)

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        # CLIP-L and CLIP-G side by side, zero-padded to T5's width, as encode_prompt does.
        width = denoiser_config.joint_attention_dim
        return {
            "clip_prompt_embeds": torch.zeros(batch_size, 77, width),
            "t5_prompt_embeds": torch.zeros(batch_size, t5_length(self.option, self.max_sequence_length), width),
            "pooled_prompt_embeds": torch.zeros(batch_size, denoiser_config.pooled_projection_dim),
        }

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        t5 = batch["t5_prompt_embeds"]
        if self.option("sd3_skip_t5", False):
            # What encode_prompt produces without a T5 encoder.
            t5 = torch.zeros_like(t5)
        return {
            "hidden_states": noisy_latents,
            "timestep": timesteps,
            "encoder_hidden_states": torch.cat([batch["clip_prompt_embeds"], t5], dim=1),
            "pooled_projections": batch["pooled_prompt_embeds"],
        }

    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        # The pipeline takes CLIP and T5 states joined, as encode_prompt returns them.
        inputs = super().validation_inputs(self._joined(positive), self._joined(negative) if negative else None)
        layers = self.option("validation_guidance_skip_layers", None)
        if layers:
            inputs.update(
                skip_guidance_layers=[int(layer) for layer in layers],
                skip_layer_guidance_scale=self.option("validation_guidance_skip_scale", 2.8),
                skip_layer_guidance_start=self.option("validation_guidance_skip_layers_start", 0.01),
                skip_layer_guidance_stop=self.option("validation_guidance_skip_layers_stop", 0.2),
            )
        return inputs

    def _joined(self, entry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t5 = entry["t5_prompt_embeds"]
        if self.option("sd3_skip_t5", False):
            t5 = torch.zeros_like(t5)
        return {"prompt_embeds": torch.cat([entry["clip_prompt_embeds"], t5], dim=1),
                "pooled_prompt_embeds": entry["pooled_prompt_embeds"]}

    def overridden_components(self, source: ModelSource) -> dict[str, Any]:
        if not any(component in source.overrides for component in self.t5_components):
            return {}
        # T5 came from --pretrained_t5_model_name_or_path: a saved pipeline keeps it.
        text = self.load_text_encoders(source)
        return {"tokenizer_3": text.tokenizers[2], "text_encoder_3": text.encoders[2]}

    def save_diffusers_lora(self, output_dir: Path, denoiser_lora_state: dict[str, torch.Tensor]) -> None:
        from diffusers.utils import convert_unet_state_dict_to_peft

        # Transformer LoRAs are stored with PEFT's names (lora_A/lora_B), as
        # diffusers' own scripts save them; the UNet-style lora.down/up names
        # would be dropped for to_q/k/v/out by the transformer loader.
        state = convert_unet_state_dict_to_peft(dict(denoiser_lora_state))
        self.pipeline_class().save_lora_weights(
            save_directory=str(output_dir), transformer_lora_layers=state, safe_serialization=True,
            transformer_lora_adapter_metadata=adapter_metadata(self.config, state),
        )


FAMILY_CLASS = SD3Family
