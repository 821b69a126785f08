"""Tiny Kolors in diffusers layout: ChatGLM3 text encoder, SDXL-style UNet with ``text_proj``.

The real model's shapes, scaled down: ChatGLM's hidden states (4096 wide in
Kolors) enter the UNet through ``encoder_hid_proj`` (``encoder_hid_dim_type=
"text_proj"``), its pooled vector (the last token's final hidden state) plus
six size/crop numbers through the ``text_time`` added embedding.  The
ChatGLM tokenizer is a sentencepiece unigram model trained here on
:data:`~simpletuner.tools.tiny.common.WORDS`, single-threaded with a fixed
seed, so its bytes are the same on every build.
"""

from __future__ import annotations

import io
from pathlib import Path

from simpletuner.tools.tiny.common import WORDS, seed_everything, tiny_vae, trained_like_posterior

TEXT_HIDDEN = 32


def train_sentencepiece(words: tuple[str, ...] = WORDS, vocab_size: int = 600) -> bytes:
    """A deterministic sentencepiece unigram model (the ``tokenizer.model`` bytes)."""
    import sentencepiece

    sentencepiece.set_random_generator_seed(0)
    # Each word four times, in shifting groups, so whole words become pieces.
    sentences = [" ".join(words[i : i + 8]) for shift in range(4) for i in range(shift, len(words), 8)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, num_threads=1, character_coverage=1.0, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return model.getvalue()


def _chatglm(vocab_size: int, seed: int):
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, RMSNorm

    # Kolors' ChatGLM3 settings (multi-query attention with 2 groups, qkv bias,
    # RMSNorm, original RoPE), with tiny widths.
    config = ChatGLMConfig(
        num_layers=2, padded_vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, ffn_hidden_size=2 * TEXT_HIDDEN,
        kv_channels=8, num_attention_heads=4, seq_length=256, multi_query_attention=True,
        multi_query_group_num=2, add_qkv_bias=True, add_bias_linear=False, original_rope=True,
        rmsnorm=True, post_layer_norm=True, use_cache=False, torch_dtype="float32",
    )
    seed_everything(seed)
    model = ChatGLMModel(config, empty_init=False)
    # RMSNorm creates its weight with torch.empty and ChatGLM's _init_weights
    # is a no-op (real weights always come from a checkpoint): set them to 1.
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)
    return model


def build(output_dir: Path, seed: int) -> Path:
    """Tiny Kolors: ChatGLM3 encoder + tokenizer, text_proj/text_time UNet, SDXL VAE, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    (output_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    model_file = output_dir / "tokenizer" / "tokenizer.model"
    model_file.write_bytes(train_sentencepiece())
    tokenizer = ChatGLMTokenizer(vocab_file=str(model_file))
    text_encoder = _chatglm(tokenizer.vocab_size, seed)
    addition_time_embed_dim = 8

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
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        cross_attention_dim=64,
        encoder_hid_dim=TEXT_HIDDEN,
        encoder_hid_dim_type="text_proj",
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * addition_time_embed_dim,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    vae = tiny_vae(seed, scaling_factor=0.13025, force_upcast=True)
    trained_like_posterior(vae, seed)
    # Kolors' scheduler: 1100 training timesteps, beta_end 0.014.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1100,
        beta_start=0.00085,
        beta_end=0.014,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipeline = KolorsPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
    )
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    return output_dir
