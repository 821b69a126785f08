"""Tiny Stable Diffusion 1.x / 2.x in diffusers layout.

``build`` writes the SD 1.x layout (quick-GELU CLIP encoder, PNDM scheduler,
epsilon prediction); ``build(..., flavour="sd2")`` the SD 2.x 768-v layout
(GELU OpenCLIP-style encoder with "!" as padding, linear attention
projections, DDIM scheduler with v-prediction).
"""

from __future__ import annotations

from pathlib import Path

from simpletuner.tools.tiny.common import (
    add_vocab_files,
    clip_text_config,
    clip_tokenizer_files,
    load_clip_tokenizer,
    seed_everything,
    tiny_vae,
    trained_like_posterior,
)

FLAVOURS = ("sd1", "sd2")


def _scheduler(flavour: str):
    from diffusers import DDIMScheduler, PNDMScheduler

    betas = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if flavour == "sd2":
        return DDIMScheduler(
            **betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"
        )
    return PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build(output_dir: Path, seed: int, flavour: str = "sd1") -> Path:
    """Tiny SD 1.x (default) or SD 2.x-v (``flavour="sd2"``): one CLIP encoder, a cross-attention UNet."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown legacy flavour {flavour!r}; one of {FLAVOURS}")
    sd2 = flavour == "sd2"
    tokenizer_files = clip_tokenizer_files()
    tokenizer = load_clip_tokenizer(tokenizer_files)
    if sd2:
        tokenizer.pad_token = "!"  # OpenCLIP pads with token 0, "!"
    text_config = clip_text_config(tokenizer, hidden_size=32, projection_dim=32)
    if sd2:
        text_config.hidden_act = "gelu"

    seed_everything(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4) if sd2 else 4,
        norm_num_groups=8,
        cross_attention_dim=text_config.hidden_size,
        use_linear_projection=sd2,
    )
    vae = tiny_vae(seed, scaling_factor=0.18215)
    trained_like_posterior(vae, seed)
    seed_everything(seed)
    text_encoder = CLIPTextModel(text_config)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(flavour),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    add_vocab_files(tokenizer_files, output_dir / "tokenizer")
    return output_dir
