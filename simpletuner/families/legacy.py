"""Stable Diffusion 1.x and 2.x: one CLIP text encoder and a UNet, no micro-conditioning.

SD 1.x (CLIP ViT-L, epsilon, 512px) and SD 2.x (OpenCLIP ViT-H converted to
``CLIPTextModel``, 768-v: v-prediction at 768px) load and train identically;
what differs is in the checkpoint's configs, above all the scheduler's
``prediction_type``, which the objective reads (``--prediction_type``
overrides it; ``--rescale_betas_zero_snr`` rescales its betas, see
``simpletuner.training.noise_schedule``).
"""

from __future__ import annotations

from typing import Any

import torch

from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders


class LegacyFamily(ModelFamily):
    name = "legacy"
    # Key prefixes by which a single-file checkpoint holds this family's denoiser (the UNet's blocks, original or diffusers layout).
    single_file_markers = ("model.diffusion_model.input_blocks.", "input_blocks.", "down_blocks.")
    # --model_flavour -> the base model it picks (SimpleTuner's names); the first is the default.
    flavours = {"1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5", "1.4": "CompVis/stable-diffusion-v1-4",
                "2.0": "stabilityai/stable-diffusion-2", "2.1": "stabilityai/stable-diffusion-2-1"}
    pipeline_class_name = "StableDiffusionPipeline"
    denoiser_component = "unet"
    denoiser_class_name = "UNet2DConditionModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("BasicTransformerBlock", "ResnetBlock2D")
    # The attention projections, the set diffusers' SD LoRA training script
    # uses and StableDiffusionPipeline.load_lora_weights maps onto the UNet.
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # Kept unquantised under --base_model_precision: the first and last
    # convolutions and the timestep embedder, which are small and
    # whose precision every output depends on.
    quantisation_exclude = ("conv_in", "conv_out", "time_embedding*")
    # kohya names of the diffusers module paths; the SD/SDXL loaders convert them back.
    kohya_lora_prefix = "lora_unet"
    # SD 1.x trains at 512px; SD 2.x's v-prediction models at 768px.
    default_resolution = 512
    resolution_by_prediction_type = {"epsilon": 512, "v_prediction": 768}
    text_components = ("text_encoder", "tokenizer")
    # CLIP's attention projections, as diffusers' train_dreambooth_lora trains them.
    text_encoder_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")
    latent_normalisation = "legacy:scaling_factor"

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import CLIPTextModel, CLIPTokenizer

        encoder = source.load(CLIPTextModel, "text_encoder")
        encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=[source.load(CLIPTokenizer, "tokenizer")], encoders=[encoder])

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            embeds = self._prompt_embeds(text, prompts)
        return [{"prompt_embeds": embeds[i].cpu()} for i in range(len(prompts))]

    def trainable_text_embeds(self, text: TextEncoders, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self._prompt_embeds(text, prompts)}

    def _prompt_embeds(self, text: TextEncoders, prompts: list[str]) -> torch.Tensor:
        # The pipeline's own encode_prompt (last hidden state after the final
        # layer norm, 77 tokens), so training sees what inference produces.
        pipeline = self.pipeline_class()(
            vae=None, text_encoder=text.encoders[0], tokenizer=text.tokenizers[0], unet=None,
            scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        embeds, _ = pipeline.encode_prompt(
            prompt=prompts, device=text.encoders[0].device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.zeros(batch_size, 77, denoiser_config.cross_attention_dim)}

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        return {"sample": noisy_latents, "timestep": timesteps, "encoder_hidden_states": batch["prompt_embeds"]}


    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        inputs = super().validation_inputs(positive, negative)
        inputs["guidance_rescale"] = self.option("validation_guidance_rescale", 0.0)
        return inputs


FAMILY_CLASS = LegacyFamily
