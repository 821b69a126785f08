"""Tiny Stable Diffusion 3 in diffusers layout."""

from __future__ import annotations

import tempfile
from pathlib import Path

from simpletuner.tools.tiny.common import (
    add_vocab_files,
    clip_text_config,
    clip_tokenizer_files,
    load_clip_tokenizer,
    seed_everything,
    tiny_vae,
)
from simpletuner.tools.tiny.t5 import tiny_t5_encoder, write_t5_tokenizer


def tiny_flow_vae(seed: int, *, scaling_factor: float, shift_factor: float):
    """The 16-channel VAE of SD3 and Flux: no quant convs, latents shifted then scaled.

    Two properties of trained VAEs that a random one lacks are restored, so
    the tiny denoiser sees data shaped like the real one's: the posterior is
    nearly deterministic (log-variance fixed at -10, standard deviation 0.007;
    a random encoder's is near 1 and buries each image in sampling noise),
    and ``(latents - shift_factor) * scaling_factor`` has unit variance, the
    definition of ``scaling_factor`` (measured on seeded random images).
    """
    import torch

    vae = tiny_vae(
        seed, scaling_factor=scaling_factor, shift_factor=shift_factor, latent_channels=16,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    conv_out = vae.encoder.conv_out
    probe = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        conv_out.weight[16:].zero_()
        conv_out.bias[16:].fill_(-10.0)
        spread = vae.encode(probe).latent_dist.mean.std().item()
        conv_out.weight[:16].mul_(1 / (scaling_factor * spread))
        conv_out.bias[:16].mul_(1 / (scaling_factor * spread))
    return vae


def build(output_dir: Path, seed: int) -> Path:
    """Tiny SD3: CLIP-L, CLIP-G and T5 encoders, an MMDiT, a 16-channel VAE, flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5TokenizerFast

    tokenizer_files = clip_tokenizer_files()
    tokenizer = load_clip_tokenizer(tokenizer_files)
    tokenizer_2 = load_clip_tokenizer(tokenizer_files)
    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(tmp)
        tokenizer_3 = T5TokenizerFast.from_pretrained(tmp)
        spiece = (Path(tmp) / "spiece.model").read_bytes()

    te1_config = clip_text_config(tokenizer, hidden_size=32, projection_dim=32)
    te2_config = clip_text_config(tokenizer_2, hidden_size=32, projection_dim=32)
    # The CLIP hidden states (concatenated) are zero-padded to T5's width, so
    # T5 must be at least as wide as both CLIP encoders together, as in SD3.
    t5_width = 64

    seed_everything(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # latent size of the default 64 px image
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,  # one joint block keeps a CPU step near 0.1 s (the 256 T5 tokens dominate)
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=t5_width,
        caption_projection_dim=128,  # = heads x head dim, as in SD3
        pooled_projection_dim=te1_config.projection_dim + te2_config.projection_dim,
        pos_embed_max_size=32,
    )
    vae = tiny_flow_vae(seed, scaling_factor=1.5305, shift_factor=0.0609)
    seed_everything(seed)
    text_encoder = CLIPTextModelWithProjection(te1_config)
    seed_everything(seed + 1)  # distinct init from encoder 1 although the configs match
    text_encoder_2 = CLIPTextModelWithProjection(te2_config)
    text_encoder_3 = tiny_t5_encoder(tokenizer_3, seed + 2, d_model=t5_width)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    add_vocab_files(tokenizer_files, output_dir / "tokenizer", output_dir / "tokenizer_2")
    (output_dir / "tokenizer_3" / "spiece.model").write_bytes(spiece)  # as in the real repos
    return output_dir
