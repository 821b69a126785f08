"""FLUX.1 [dev]/[schnell]: CLIP-L pooled + T5, a transformer on 2x2-packed latents, flow matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from simpletuner.errors import ModelError
from simpletuner.families.base import FlowMatchingFamily, ModelSource, TextEncoders
from simpletuner.families.t5_prompts import settings_identity, t5_attention_mask, t5_length, zero_padding
from simpletuner.training.lora_formats import adapter_metadata

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")  # image side of the double blocks, and the single blocks
_CONTEXT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")  # the double blocks' text side
_FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
_CONTEXT_FEED_FORWARD = ("ff_context.net.0.proj", "ff_context.net.2")
_SINGLE_MLP = ("proj_mlp", "proj_out")  # single blocks' MLP in and fused output (also the model's own proj_out)
# --flux_lora_target presets: PEFT module-name suffixes of diffusers' FluxTransformer2DModel,
# as SimpleTuner's presets name them (tiny and nano after TheLastBen's small LoRAs).
FLUX_LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "mmdit": _ATTENTION,
    "context": _CONTEXT,
    "context+ffs": _CONTEXT + _CONTEXT_FEED_FORWARD,
    "all": _ATTENTION + _CONTEXT,
    "all+ffs": _ATTENTION + _CONTEXT + _FEED_FORWARD + _CONTEXT_FEED_FORWARD + _SINGLE_MLP,
    # ostris' ai-toolkit's set, so its LoRAs can be trained further: adds the adaptive norms' projections.
    "ai-toolkit": _ATTENTION + _CONTEXT + _FEED_FORWARD + _CONTEXT_FEED_FORWARD
    + ("norm.linear", "norm1.linear", "norm1_context.linear") + _SINGLE_MLP,
    "tiny": ("single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"),
    "nano": ("single_transformer_blocks.7.proj_out",),
}


class FluxFamily(FlowMatchingFamily):
    name = "flux"
    # Key prefixes by which a single-file checkpoint holds this family's denoiser (the double blocks, or diffusers' single_transformer_blocks).
    single_file_markers = ("model.diffusion_model.double_blocks.", "double_blocks.", "single_transformer_blocks.")
    # --model_flavour -> the base model it picks (SimpleTuner's names); the first is the default.
    flavours = {"dev": "black-forest-labs/FLUX.1-dev", "schnell": "black-forest-labs/FLUX.1-schnell",
                "krea": "black-forest-labs/FLUX.1-Krea-dev"}
    # diffusers' converter of the original (Black Forest Labs) layout derives the block
    # counts from the file but hard-codes FLUX.1's width (inner_dim = 3072, mlp_ratio 4)
    # to split each single block's fused linear1, so only that width converts.
    original_layout_width = 3072
    pipeline_class_name = "FluxPipeline"
    denoiser_component = "transformer"
    denoiser_class_name = "FluxTransformer2DModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    # The attention projections of the double-stream blocks (image and text)
    # and the single-stream blocks' q/k/v, as diffusers' Flux LoRA scripts
    # train them and its loader maps them.
    default_lora_targets = (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    )
    # Kept unquantised under --base_model_precision: the input and output
    # projections, the final adaptive norm and the timestep/text embedders.
    quantisation_exclude = ("x_embedder", "context_embedder", "time_text_embed*", "norm_out*", "proj_out")
    default_resolution = 1024
    # kohya names of the diffusers module paths, which FluxPipeline converts back
    # for the attention projections (the trainer checks the targets before training).
    kohya_lora_prefix = "lora_transformer"
    # diffusers gives Flux its own attention class (not the shared ``Attention``).
    attention_class_names = ("FluxAttention",)
    # FluxAttnProcessor hands attention to diffusers' dispatch_attention_fn.
    attention_dispatch = True
    text_components = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    t5_components = ("text_encoder_2", "tokenizer_2")
    latent_normalisation = "flux:shift_factor,scaling_factor"
    # encode_prompt's default, what the pipeline uses at inference (--tokenizer_max_length changes it).
    max_sequence_length = 512
    # Options that change the cached text embeds, with their defaults.
    text_setting_defaults = {"t5_padding": "unmodified", "tokenizer_max_length": None,
                             "flux_attention_masked_training": False}

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        tokenizers = [source.load(CLIPTokenizer, "tokenizer"), source.load(T5TokenizerFast, "tokenizer_2")]
        encoders = [source.load(CLIPTextModel, "text_encoder"), source.load(T5EncoderModel, "text_encoder_2")]
        for encoder in encoders:
            encoder.requires_grad_(False).eval()
        return TextEncoders(tokenizers=tokenizers, encoders=encoders)

    def load_denoiser(self, source: ModelSource) -> Any:
        from diffusers import FluxTransformer2DModel

        transformer = source.load(FluxTransformer2DModel, "transformer")
        self.denoiser_loaded(transformer)
        return transformer

    def denoiser_loaded(self, denoiser: Any) -> None:
        # dev embeds the guidance value; schnell has no guidance embedder.
        self.guidance_embeds = bool(denoiser.config.guidance_embeds)
        self.single_blocks = int(denoiser.config.num_single_layers)

    def lora_targets(self, config: Any) -> tuple[str, ...]:
        """--lora_target_modules, else the --flux_lora_target preset."""
        if config.lora_target_modules:
            return tuple(config.lora_target_modules)
        preset = self.option("flux_lora_target", "all")
        targets = FLUX_LORA_PRESETS[preset]
        blocks = getattr(self, "single_blocks", None)
        wanted = [int(name.split(".")[1]) for name in targets if name.startswith("single_transformer_blocks.")]
        if blocks is not None and wanted and max(wanted) >= blocks:
            raise ModelError(
                f"--flux_lora_target={preset} trains single_transformer_blocks "
                f"{', '.join(str(i) for i in wanted)}, but this transformer has {blocks} single blocks; "
                "choose another --flux_lora_target"
            )
        return targets

    def random_conditioning(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample guidance values under --flux_guidance_mode random-range (uniform in [min, max])."""
        if self.option("flux_guidance_mode", "constant") != "random-range":
            return {}
        low, high = float(self.option("flux_guidance_min", 0.0)), float(self.option("flux_guidance_max", 4.0))
        return {"guidance": low + (high - low) * torch.rand((batch_size,), generator=generator)}

    def text_settings(self) -> str:
        return settings_identity(self.option, self.text_setting_defaults)

    def _masked(self) -> bool:
        return bool(self.option("flux_attention_masked_training", False))

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        length = t5_length(self.option, self.max_sequence_length)
        batch = {
            "prompt_embeds": torch.zeros(batch_size, length, denoiser_config.joint_attention_dim),
            "pooled_prompt_embeds": torch.zeros(batch_size, denoiser_config.pooled_projection_dim),
        }
        if self._masked():
            batch["prompt_attention_mask"] = torch.ones(batch_size, length)
        return batch

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        # The pipeline's encode_prompt: T5's hidden states and CLIP's pooled
        # output.  Its text ids are all zeros and are rebuilt per batch.
        pipeline = self.pipeline_class()(
            scheduler=None, vae=None, transformer=None,
            text_encoder=text.encoders[0], tokenizer=text.tokenizers[0],
            text_encoder_2=text.encoders[1], tokenizer_2=text.tokenizers[1],
        )
        device = text.encoders[0].device
        length = t5_length(self.option, self.max_sequence_length)
        with torch.no_grad():
            embeds, pooled, _ = pipeline.encode_prompt(
                prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=length,
            )
        # The pipeline does not return T5's padding mask; the same tokenization gives it.
        mask = t5_attention_mask(text.tokenizers[1], prompts, length)
        if self.option("t5_padding", "unmodified") == "zero":
            embeds = zero_padding(embeds, mask)
        entries = [{"prompt_embeds": embeds[i].cpu(), "pooled_prompt_embeds": pooled[i].cpu()}
                   for i in range(len(prompts))]
        if self._masked():  # kept only when training reads it (the option enters the cache key)
            for entry, row in zip(entries, mask):
                entry["prompt_attention_mask"] = row
        return entries

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        from diffusers import FluxPipeline

        batch_size, channels, height, width = noisy_latents.shape
        embeds = batch["prompt_embeds"]
        inputs = {
            "hidden_states": FluxPipeline._pack_latents(noisy_latents, batch_size, channels, height, width),
            # The pipeline passes t / 1000, i.e. sigma; the model scales it back.
            "timestep": timesteps / 1000,
            "pooled_projections": batch["pooled_prompt_embeds"],
            "encoder_hidden_states": embeds,
            "txt_ids": torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype),
            "img_ids": FluxPipeline._prepare_latent_image_ids(
                batch_size, height // 2, width // 2, noisy_latents.device, noisy_latents.dtype
            ),
        }
        if self._masked():
            inputs["joint_attention_kwargs"] = {"attention_mask": self._joint_mask(batch, inputs["hidden_states"])}
        if getattr(self, "guidance_embeds", True):
            drawn = batch.get("guidance")  # random_conditioning's draw, else the constant value
            inputs["guidance"] = (
                drawn.to(noisy_latents.device, torch.float32) if drawn is not None else torch.full(
                    (batch_size,), float(self.option("flux_guidance_value", 1.0)),
                    device=noisy_latents.device, dtype=torch.float32,
                )
            )
        return inputs

    @staticmethod
    def _joint_mask(batch: dict[str, Any], packed: torch.Tensor) -> torch.Tensor:
        """--flux_attention_masked_training: a boolean mask over Flux's joint sequence
        (T5 tokens, then image tokens) that hides T5's padding tokens from every query.

        Shaped (batch, 1, 1, tokens) so it broadcasts over heads and queries; the
        attention processors of both block kinds take it as ``attention_mask``.
        """
        text = batch["prompt_attention_mask"].to(packed.device).bool()
        image = torch.ones(packed.shape[0], packed.shape[1], dtype=torch.bool, device=packed.device)
        return torch.cat([text, image], dim=1)[:, None, None, :]

    def prediction(self, output: Any, noisy_latents: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxPipeline

        packed = output.sample if hasattr(output, "sample") else output[0]
        height, width = noisy_latents.shape[-2:]
        return FluxPipeline._unpack_latents(
            packed, height * self.vae_scale_factor, width * self.vae_scale_factor, self.vae_scale_factor
        )

    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        # --validation_guidance is the value dev embeds; real CFG (--validation_guidance_real)
        # runs the model a second time on the negative prompt.
        real = self.option("validation_guidance_real", 1.0)
        # The pipeline takes no T5 mask beside the embeds; render_validation passes it on.
        mask = positive.get("prompt_attention_mask")
        positive, negative = ({k: v for k, v in entry.items() if k != "prompt_attention_mask"} if entry else entry
                              for entry in (positive, negative))
        inputs = super().validation_inputs(positive, negative if real > 1 else None)
        if mask is not None and real <= 1:
            inputs["prompt_attention_mask"] = mask
        if real > 1:
            inputs["true_cfg_scale"] = real
        return inputs

    def render_validation(self, pipeline: Any, inputs: dict[str, Any]) -> Any:
        """--validation_no_cfg_until_timestep: the first steps without real CFG.

        The stock pipeline guides every step or none, so the run is split: the
        first call stops after those steps (the pipeline's interrupt flag) and
        returns its packed latents; the second continues from them over the
        rest of the same sigma schedule, with guidance.
        """
        import numpy as np

        mask = inputs.pop("prompt_attention_mask", None)
        if mask is not None:
            # --flux_attention_masked_training: render as trained, padding hidden.  Only
            # without real CFG (validation_inputs keeps no mask then): the pipeline
            # gives its positive and negative passes the same attention arguments.
            scale = 2 * pipeline.vae_scale_factor  # pixels per packed image token
            image_tokens = (inputs["height"] // scale) * (inputs["width"] // scale)
            packed = torch.empty(mask.shape[0], image_tokens, 0, device=pipeline.device)
            joint = self._joint_mask({"prompt_attention_mask": mask}, packed)
            inputs = {**inputs, "joint_attention_kwargs": {"attention_mask": joint}}
        unguided = min(self.option("validation_no_cfg_until_timestep", 2), inputs["num_inference_steps"])
        if "true_cfg_scale" not in inputs or unguided == 0:
            return super().render_validation(pipeline, inputs)
        steps = inputs["num_inference_steps"]
        sigmas = np.linspace(1.0, 1 / steps, steps)  # the pipeline's own default schedule
        if unguided == steps:
            plain = {k: v for k, v in inputs.items() if not k.startswith("negative_") and k != "true_cfg_scale"}
            return super().render_validation(pipeline, plain)

        def stop(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if index == unguided - 1:
                pipe._interrupt = True
            return tensors

        first = {k: v for k, v in inputs.items() if not k.startswith("negative_") and k != "true_cfg_scale"}
        latents = pipeline(**{**first, "sigmas": sigmas, "output_type": "latent",
                              "callback_on_step_end": stop}).images
        rest = {**inputs, "sigmas": sigmas[unguided:], "num_inference_steps": steps - unguided, "latents": latents}
        return pipeline(**rest).images[0]

    def overridden_components(self, source: ModelSource) -> dict[str, Any]:
        if not any(component in source.overrides for component in self.t5_components):
            return {}
        # T5 came from --pretrained_t5_model_name_or_path: a saved pipeline keeps it.
        text = self.load_text_encoders(source)
        return {"tokenizer_2": text.tokenizers[1], "text_encoder_2": text.encoders[1]}

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

    def single_file_problem(self, path: str, keys: list[str]) -> Optional[str]:
        from simpletuner.families.model_folder import single_file_shape

        prefix = "model.diffusion_model." if "model.diffusion_model.img_in.weight" in keys else ""
        if f"{prefix}img_in.weight" not in keys:  # diffusers' layout: loaded as it is
            return None
        width = single_file_shape(path, f"{prefix}img_in.weight")[0]
        if width == self.original_layout_width:
            return None
        return (f"holds a Flux transformer {width} wide in the original (Black Forest Labs) layout, which "
                f"diffusers' converter cannot read: it assumes FLUX.1's width of {self.original_layout_width}; "
                "save the model in diffusers' layout (its state dict as one file, or a model folder) and point "
                "at that")


FAMILY_CLASS = FluxFamily
