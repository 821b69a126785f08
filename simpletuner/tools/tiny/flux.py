"""Tiny FLUX.1 [dev] in diffusers layout."""

from __future__ import annotations

import tempfile
from pathlib import Path

from simpletuner.tools.tiny.common import (
    add_vocab_files,
    clip_text_config,
    clip_tokenizer_files,
    load_clip_tokenizer,
    seed_everything,
)
from simpletuner.tools.tiny.sd3 import tiny_flow_vae
from simpletuner.tools.tiny.t5 import tiny_t5_encoder, write_t5_tokenizer


def build(output_dir: Path, seed: int) -> Path:
    """Tiny Flux: CLIP-L (pooled) and T5, a guidance-distilled transformer on packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5TokenizerFast

    tokenizer_files = clip_tokenizer_files()
    tokenizer = load_clip_tokenizer(tokenizer_files)
    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(tmp)
        tokenizer_2 = T5TokenizerFast.from_pretrained(tmp)
        spiece = (Path(tmp) / "spiece.model").read_bytes()

    clip_config = clip_text_config(tokenizer, hidden_size=32, projection_dim=32)
    t5_width = 32

    seed_everything(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=t5_width,
        pooled_projection_dim=clip_config.hidden_size,  # CLIP's pooled output, not its projection
        guidance_embeds=True,  # dev; schnell has none
        axes_dims_rope=(8, 12, 12),  # sums to the head dim, as (16, 56, 56) does for 128
    )
    vae = tiny_flow_vae(seed, scaling_factor=0.3611, shift_factor=0.1159)
    seed_everything(seed)
    text_encoder = CLIPTextModel(clip_config)
    text_encoder_2 = tiny_t5_encoder(tokenizer_2, seed + 1, d_model=t5_width)
    # FLUX.1-dev's scheduler: the shift follows the image's token count.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
        base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    add_vocab_files(tokenizer_files, output_dir / "tokenizer")
    (output_dir / "tokenizer_2" / "spiece.model").write_bytes(spiece)  # as in the real repos
    return output_dir
