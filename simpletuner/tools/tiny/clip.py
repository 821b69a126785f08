"""Tiny CLIP (text and vision towers, projections, processor) for ``--evaluation_type clip`` tests.

Written with ``save_pretrained`` so it loads exactly as a Hub CLIP does:
``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` on the folder.
"""

from __future__ import annotations

from pathlib import Path

from simpletuner.tools.tiny.common import clip_text_config, load_clip_tokenizer, clip_tokenizer_files, seed_everything


def build(output_dir: Path, seed: int) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tokenizer = load_clip_tokenizer(clip_tokenizer_files())
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    config = CLIPConfig(text_config=clip_text_config(tokenizer).to_dict(), vision_config=vision.to_dict(),
                        projection_dim=32)
    seed_everything(seed)
    CLIPModel(config).save_pretrained(str(output_dir))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(output_dir))
    return output_dir
