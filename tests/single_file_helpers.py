"""Single-file checkpoints made from the tiny models, for the single-file tests.

diffusers only converts original checkpoints *to* its layout, so the UNet's
inverse (diffusers -> the original LDM/SGM key layout that SDXL's and SD's
released .safetensors files use) is written out here, after diffusers'
scripts/convert_diffusers_to_original_sdxl.py; the test round-trips it
through diffusers' own converter, so a wrong name fails there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
           ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut"))
_TOP = (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"))


def _prefixes(config: dict) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) of every block of a UNet2DConditionModel."""
    levels, per_block = len(config["block_out_channels"]), config["layers_per_block"]
    pairs = []
    for i in range(levels):
        for j in range(per_block):
            pairs.append((f"input_blocks.{(per_block + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            pairs.append((f"input_blocks.{(per_block + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per_block + 1):
            pairs.append((f"output_blocks.{(per_block + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            pairs.append((f"output_blocks.{(per_block + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(per_block + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            has_attention = "CrossAttn" in config["up_block_types"][i]
            pairs.append((f"output_blocks.{(per_block + 1) * i + per_block}.{2 if has_attention else 1}.",
                          f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def unet_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the original layout (``model.diffusion_model.``)."""
    prefixes = _prefixes(config)
    out = {}
    for name, tensor in state.items():
        new = name
        for original, diffusers_name in _TOP:
            if name.startswith(diffusers_name + "."):
                new = original + name[len(diffusers_name):]
        for original, diffusers_prefix in prefixes:
            if name.startswith(diffusers_prefix):
                rest = name[len(diffusers_prefix):]
                if "resnets" in diffusers_prefix:
                    for old, ours in _RESNET:
                        rest = rest.replace(ours, old) if rest.startswith(ours) else rest
                new = original + rest
        out["model.diffusion_model." + new] = tensor.clone()
    return out


_VAE_ATTENTION = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."))


def vae_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original layout (``first_stage_model.``)."""
    levels, per_block = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = [("mid.attn_1.", "mid_block.attentions.0.")]
    prefixes += [(f"mid.block_{j + 1}.", f"mid_block.resnets.{j}.") for j in range(2)]
    for i in range(levels):
        prefixes += [(f"down.{i}.block.{j}.", f"down_blocks.{i}.resnets.{j}.") for j in range(per_block)]
        prefixes += [(f"up.{levels - 1 - i}.block.{j}.", f"up_blocks.{i}.resnets.{j}.") for j in range(per_block + 1)]
        if i < levels - 1:
            prefixes.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            prefixes.append((f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
    out = {}
    for name, tensor in state.items():
        side, rest = name.split(".", 1) if name.startswith(("encoder.", "decoder.")) else ("", name)
        for original, diffusers_prefix in prefixes:
            if rest.startswith(diffusers_prefix):
                rest = original + rest[len(diffusers_prefix):]
                if original == "mid.attn_1.":
                    for old, ours in _VAE_ATTENTION:
                        if rest.startswith("mid.attn_1." + ours):
                            rest = "mid.attn_1." + old + rest[len("mid.attn_1." + ours):]
                    if tensor.ndim == 2:  # the original attention uses 1x1 convolutions
                        tensor = tensor[:, :, None, None]
                break
        rest = rest.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out["first_stage_model." + (f"{side}." if side else "") + rest] = tensor.clone().contiguous()
    return out


def write_sdxl_single_file(model: Path, path: Path, unet: Any = None, vae: Any = None,
                           extra: dict[str, torch.Tensor] | None = None) -> Path:
    """A tiny SDXL's or SD's UNet and VAE (or the ones given) as an original-layout single file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = unet or UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    vae = vae or AutoencoderKL.from_pretrained(model, subfolder="vae")
    save_file({**unet_to_original(unet.state_dict(), dict(unet.config)),
               **vae_to_original(vae.state_dict(), dict(vae.config)), **(extra or {})}, str(path))
    return path


def write_diffusers_single_file(denoiser: Any, path: Path) -> Path:
    """A denoiser saved as one file in diffusers' key layout (how many Flux fine-tunes ship)."""
    save_file({k: v.contiguous() for k, v in denoiser.state_dict().items()}, str(path))
    return path
