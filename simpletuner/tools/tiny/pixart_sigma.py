"""Tiny PixArt-Sigma in diffusers layout (``PixArtSigmaPipeline``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from simpletuner.tools.tiny.common import seed_everything, tiny_vae
from simpletuner.tools.tiny.t5 import tiny_t5_encoder, write_t5_tokenizer


def realistic_posterior(vae, gain: float = 10.0, log_variance: float = -10.0):
    """Make a random tiny VAE's latents behave like a trained VAE's.

    A trained VAE's posterior is narrow and its latents, times
    ``scaling_factor``, have about unit variance; a random tiny VAE's are
    wide (sampling noise swamps the image) and small.  Scaling the mean
    half of ``quant_conv`` by ``gain`` (undone by ``post_quant_conv``, so
    decoding is unchanged) and fixing the log-variance fixes both.
    """
    import torch

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:channels] *= gain
        vae.quant_conv.bias[:channels] *= gain
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = log_variance
        vae.post_quant_conv.weight /= gain
    return vae


def pixart_init(transformer) -> None:
    """Initialise like PixArt's training code (``PixArtMS.initialize_weights``).

    Xavier-uniform linears (the patch embedding too) with zero biases and
    N(0, 0.02) timestep and caption MLPs.  In trials the tiny DiT so
    initialised separated the two-class proof's classes far more clearly
    after the same training than with PyTorch's default initialisation.
    PixArt's zeroed output and cross-attention projections are left out: a
    released checkpoint has none, and a zero output layer would hide what an
    adapter does.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        weight = transformer.pos_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(transformer.pos_embed.proj.bias)
        embedder = transformer.adaln_single.emb.timestep_embedder
        for linear in (embedder.linear_1, embedder.linear_2, transformer.adaln_single.linear,
                       transformer.caption_projection.linear_1, transformer.caption_projection.linear_2):
            nn.init.normal_(linear.weight, std=0.02)


def build(output_dir: Path, seed: int) -> Path:
    """Tiny PixArt-Sigma: one T5 encoder, a learned-sigma DiT, the SDXL VAE's scaling.

    Mirrors ``PixArt-alpha/PixArt-Sigma-XL-2-512-MS``: ``out_channels`` is twice
    ``in_channels`` (the second half is the learned variance), no resolution or
    aspect-ratio micro-conditions (``PixArtSigmaPipeline`` passes none), and
    the DPM-Solver++ scheduler config the real repository ships.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_t5_tokenizer(tmp)
        tokenizer = T5Tokenizer.from_pretrained(tmp)
        spiece = (Path(tmp) / "spiece.model").read_bytes()
    text_encoder = tiny_t5_encoder(tokenizer, seed, d_model=32)

    seed_everything(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,  # learned sigma: epsilon and variance halves
        num_layers=2,
        cross_attention_dim=64,  # the inner dim: captions are projected to it
        caption_channels=text_encoder.config.d_model,
        sample_size=64,  # 512 px, so the pipeline's resolution binning applies
        patch_size=2,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        interpolation_scale=1,
        use_additional_conditions=False,
    )
    pixart_init(transformer)
    # Sigma uses the SDXL VAE, hence SDXL's scaling factor.
    vae = realistic_posterior(tiny_vae(seed, scaling_factor=0.13025, force_upcast=True))
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
        use_karras_sigmas=False,
    )
    pipeline = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    # The sentencepiece model beside tokenizer.json, as in the real repository.
    (Path(output_dir) / "tokenizer" / "spiece.model").write_bytes(spiece)
    return output_dir
