"""Tiny Stable Diffusion XL in diffusers layout."""

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




FLAVOURS = ("base", "refiner")


def build(output_dir: Path, seed: int, flavour: str = "base") -> Path:
    """Tiny Stable Diffusion XL: two CLIP encoders, text_time micro-conditioning.

    ``flavour="refiner"`` has the SDXL refiner's layout instead: an img2img
    pipeline with only the second text encoder, whose UNet's micro-conditioning
    holds an aesthetic score in place of the target size (five numbers, not six)
    and whose model_index sets ``requires_aesthetics_score``.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown sdxl flavour {flavour!r}; choose one of {FLAVOURS}")
    refiner = flavour == "refiner"
    tokenizer_files = clip_tokenizer_files()
    tokenizer = load_clip_tokenizer(tokenizer_files)
    tokenizer_2 = load_clip_tokenizer(tokenizer_files)

    te1_config = clip_text_config(tokenizer, hidden_size=32, projection_dim=32)
    te2_config = clip_text_config(tokenizer_2, hidden_size=32, projection_dim=32)
    addition_time_embed_dim = 8
    time_ids = 5 if refiner else 6

    seed_everything(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),  # diffusers' name for the number of heads
        norm_num_groups=8,
        cross_attention_dim=te2_config.hidden_size if refiner else te1_config.hidden_size + te2_config.hidden_size,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=te2_config.projection_dim + time_ids * addition_time_embed_dim,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    vae = tiny_vae(seed, scaling_factor=0.13025, force_upcast=True)
    trained_like_posterior(vae, seed)
    seed_everything(seed)
    text_encoder = CLIPTextModel(te1_config)
    seed_everything(seed + 1)  # distinct init from encoder 1 although the configs match
    text_encoder_2 = CLIPTextModelWithProjection(te2_config)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    if refiner:
        StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer_2,
            unet=unet, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        ).save_pretrained(str(output_dir), safe_serialization=True)
        add_vocab_files(tokenizer_files, output_dir / "tokenizer_2")
        return output_dir
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    add_vocab_files(tokenizer_files, output_dir / "tokenizer", output_dir / "tokenizer_2")
    return output_dir
