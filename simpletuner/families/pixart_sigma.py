"""PixArt-Sigma: a T5 text encoder with attention masks, a learned-sigma DiT.

Training follows PixArt's own recipe: DDPM epsilon prediction on the
linear-beta schedule the scheduler config names, with the loss on the first
half of the transformer's output channels only (the second half is the
learned variance, which the MSE does not train; PixArt's training drops it
the same way and ``PixArtSigmaPipeline`` discards it at inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simpletuner.errors import ModelError
from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders
from simpletuner.families.t5_prompts import settings_identity, t5_length, zero_padding

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class PixArtSigmaFamily(ModelFamily):
    name = "pixart_sigma"
    # --model_flavour -> the base model it picks (SimpleTuner's names); the first is the default.
    flavours = {"sigma-900M-1024": "terminusresearch/pixart-900m-1024-ft-v0.6",
                "sigma-600M-1024": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
                "sigma-600M-512": "PixArt-alpha/PixArt-Sigma-XL-2-512-MS",
                "sigma-600M-2k": "PixArt-alpha/PixArt-Sigma-XL-2-2K-MS"}
    pipeline_class_name = "PixArtSigmaPipeline"
    denoiser_component = "transformer"
    denoiser_class_name = "PixArtTransformer2DModel"
    # The denoiser's repeated blocks: one FSDP2 shard group each (--fsdp_enable).
    fsdp_block_class_names = ("BasicTransformerBlock",)
    # Self- and cross-attention projections of every block (SimpleTuner's default).
    default_lora_targets = ("to_k", "to_q", "to_v", "to_out.0")
    # Kept unquantised under --base_model_precision: the input and output
    # projections, the final adaptive norm and the timestep/text embedders.
    quantisation_exclude = ("pos_embed*", "adaln_single*", "caption_projection*", "proj_out")
    default_resolution = 1024
    text_components = ("text_encoder", "tokenizer")
    t5_components = ("text_encoder", "tokenizer")
    latent_normalisation = "pixart_sigma:scaling_factor"
    # PixArt-Sigma's caption length (encode_prompt's default); a fixed length
    # so cached embeds and masks of different captions stack into a batch.
    max_sequence_length = 300
    # Options that change the cached text embeds, with their defaults.
    text_setting_defaults = {"t5_padding": "unmodified", "tokenizer_max_length": None}

    def text_settings(self) -> str:
        return settings_identity(self.option, self.text_setting_defaults)

    def load_text_encoders(self, source: ModelSource) -> TextEncoders:
        from transformers import T5EncoderModel, T5Tokenizer

        tokenizer = source.load(T5Tokenizer, "tokenizer")
        encoder = source.load(T5EncoderModel, "text_encoder").requires_grad_(False).eval()
        return TextEncoders(tokenizers=[tokenizer], encoders=[encoder])

    def encode_text(self, text: TextEncoders, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        # encode_prompt lower-cases captions and returns T5's last hidden state
        # with the padding mask, exactly what the pipeline feeds at inference.
        # clean_caption=False: caption cleaning needs bs4/ftfy and rewrites
        # text; captions are trained as written.
        pipeline = self.pipeline_class()(
            tokenizer=text.tokenizers[0], text_encoder=text.encoders[0], vae=None, transformer=None, scheduler=None
        )
        with torch.no_grad():
            embeds, mask, _, _ = pipeline.encode_prompt(
                prompts, do_classifier_free_guidance=False, num_images_per_prompt=1,
                device=text.encoders[0].device, clean_caption=False,
                max_sequence_length=t5_length(self.option, self.max_sequence_length),
            )
        if self.option("t5_padding", "unmodified") == "zero":
            embeds = zero_padding(embeds, mask)
        return [
            {"prompt_embeds": embeds[i].cpu(), "prompt_attention_mask": mask[i].cpu()} for i in range(len(prompts))
        ]

    def sample_conditioning(self, samples: list) -> dict[str, torch.Tensor]:
        # PixArt's micro-conditions, as its multi-scale training computes them:
        # the source image's (h, w) and the trained bucket's aspect ratio h / w.
        # Only models built with use_additional_conditions read them; the
        # others (every Sigma checkpoint) ignore them.
        return {
            "resolution": torch.tensor([list(s.original_size) for s in samples], dtype=torch.float32),
            "aspect_ratio": torch.tensor([[s.target_size[0] / s.target_size[1]] for s in samples]),
        }

    def example_text_batch(self, denoiser_config: Any, batch_size: int) -> dict[str, torch.Tensor]:
        length = t5_length(self.option, self.max_sequence_length)
        return {
            "prompt_embeds": torch.zeros(batch_size, length, denoiser_config.caption_channels),
            "prompt_attention_mask": torch.ones(batch_size, length),
            "resolution": torch.zeros(batch_size, 2),
            "aspect_ratio": torch.ones(batch_size, 1),
        }

    def model_inputs(self, batch: dict[str, Any], noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        return {
            "hidden_states": noisy_latents,
            "timestep": timesteps,
            "encoder_hidden_states": batch["prompt_embeds"],
            "encoder_attention_mask": batch["prompt_attention_mask"],
            "added_cond_kwargs": {"resolution": batch["resolution"], "aspect_ratio": batch["aspect_ratio"]},
        }

    def prediction(self, output: Any, noisy_latents: torch.Tensor) -> torch.Tensor:
        """The epsilon half of a learned-sigma output (all of it otherwise)."""
        sample = super().prediction(output, noisy_latents)
        channels = noisy_latents.shape[1]
        if sample.shape[1] == 2 * channels:
            return sample[:, :channels]
        return sample

    def validation_inputs(self, positive: dict[str, torch.Tensor], negative: Any) -> dict[str, Any]:
        inputs = super().validation_inputs(positive, negative)
        # Binning would render at the nearest trained aspect bucket and resize:
        # validation images are drawn at exactly the size asked for.
        inputs["use_resolution_binning"] = False
        inputs["negative_prompt"] = None  # defaults to "", which the pipeline refuses beside embeds
        return inputs

    def save_diffusers_lora(self, output_dir: Path, denoiser_lora_state: dict[str, torch.Tensor]) -> None:
        # PixArtSigmaPipeline has no LoRA loader mixin, hence no save_lora_weights;
        # the file has the layout of diffusers' transformer LoRAs (SD3, Flux):
        # pytorch_lora_weights.safetensors, "transformer."-prefixed PEFT keys,
        # the adapter's rank and alpha in the header's lora_adapter_metadata.
        from diffusers.loaders.lora_base import LoraBaseMixin
        from diffusers.utils import convert_unet_state_dict_to_peft

        state = convert_unet_state_dict_to_peft(dict(denoiser_lora_state))
        metadata = None
        if self.config is not None:
            rank = self.config.lora_rank
            alpha = self.config.lora_alpha if self.config.lora_alpha is not None else rank
            metadata = {"transformer.r": rank, "transformer.lora_alpha": alpha,
                        "transformer.target_modules": sorted(self.lora_targets(self.config))}
        LoraBaseMixin.write_lora_layers(
            state_dict=LoraBaseMixin.pack_weights(state, "transformer"),
            save_directory=str(output_dir),
            is_main_process=True,
            weight_name=LORA_WEIGHT_NAME,
            save_function=None,
            safe_serialization=True,
            lora_adapter_metadata=metadata,
        )

    def load_lora(self, pipeline: Any, folder: Path) -> None:
        """What diffusers' ``load_lora_adapter`` does, for a transformer without its mixin."""
        import json

        from diffusers.utils.peft_utils import get_peft_kwargs
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = str(Path(folder) / LORA_WEIGHT_NAME)
        prefix = "transformer."
        state = {k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}
        with safe_open(path, framework="pt") as file:
            header = json.loads((file.metadata() or {}).get("lora_adapter_metadata", "{}"))
        settings = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
        if not settings:  # no metadata: infer the ranks, alpha = rank
            ranks = {k: v.shape[1] for k, v in state.items() if ".lora_B." in k}
            settings = get_peft_kwargs(ranks, None, state)
        inject_adapter_in_model(LoraConfig(**settings), pipeline.transformer)
        result = set_peft_model_state_dict(pipeline.transformer, state)
        if getattr(result, "unexpected_keys", None):
            raise ModelError(f"{path}: LoRA keys this transformer lacks: {result.unexpected_keys[:3]}")

    def overridden_components(self, source: ModelSource) -> dict[str, Any]:
        if not any(component in source.overrides for component in self.t5_components):
            return {}
        # The T5 came from elsewhere: the saved pipeline keeps the one trained with.
        text = self.load_text_encoders(source)
        return {"tokenizer": text.tokenizers[0], "text_encoder": text.encoders[0]}


FAMILY_CLASS = PixArtSigmaFamily
