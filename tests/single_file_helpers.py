"""Single-file checkpoints made from the tiny models, for the single-file tests.

diffusers only converts original checkpoints *to* its layout, so the
inverses (diffusers -> the original LDM/SGM layout of SDXL's and SD's released
.safetensors files, after diffusers' scripts/convert_diffusers_to_original_sdxl.py,
-> Stability's MMDiT layout for SD3, and -> Black Forest Labs' layout for Flux) are written out here; the tests load
them through diffusers' own converters, so a wrong name fails there.
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


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """diffusers' swap_scale_shift, which is its own inverse."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


class _Renamer:
    """Moves a transformer's weights and biases from diffusers' names to an original layout's."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)  # what is left to move
        self.out: dict[str, torch.Tensor] = {}

    def move(self, ours: str, original: str, transform: Any = None) -> None:
        for suffix in ("weight", "bias"):
            if f"{ours}.{suffix}" in self.state:
                tensor = self.state.pop(f"{ours}.{suffix}")
                self.out[f"{original}.{suffix}"] = transform(tensor) if transform else tensor

    def fuse(self, ours: list[str], original: str) -> None:
        """Several diffusers projections concatenated into one original tensor (fused qkv)."""
        for suffix in ("weight", "bias"):
            self.out[f"{original}.{suffix}"] = torch.cat([self.state.pop(f"{name}.{suffix}") for name in ours],
                                                         dim=0)


def sd3_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers SD3Transformer2DModel state dict in Stability's MMDiT layout
    (``model.diffusion_model.joint_blocks...``), the inverse of diffusers'
    convert_sd3_transformer_checkpoint_to_diffusers."""
    renamer = _Renamer(state)
    state, out, move, fuse = renamer.state, renamer.out, renamer.move, renamer.fuse

    out["pos_embed"] = state.pop("pos_embed.pos_embed")
    move("pos_embed.proj", "x_embedder.proj")
    move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    move("context_embedder", "context_embedder")
    layers = 1 + max(int(name.split(".")[1]) for name in state if name.startswith("transformer_blocks."))
    for i in range(layers):
        ours, x, context = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == layers - 1
        fuse([f"{ours}attn.to_{p}" for p in "qkv"], f"{x}attn.qkv")
        fuse([f"{ours}attn.add_{p}_proj" for p in "qkv"], f"{context}attn.qkv")
        for norm, original in (("norm_q", f"{x}attn.ln_q"), ("norm_k", f"{x}attn.ln_k"),
                               ("norm_added_q", f"{context}attn.ln_q"), ("norm_added_k", f"{context}attn.ln_k")):
            move(f"{ours}attn.{norm}", original)
        move(f"{ours}attn.to_out.0", f"{x}attn.proj")
        move(f"{ours}attn.to_add_out", f"{context}attn.proj")
        if f"{ours}attn2.to_q.weight" in state:
            fuse([f"{ours}attn2.to_{p}" for p in "qkv"], f"{x}attn2.qkv")
            move(f"{ours}attn2.norm_q", f"{x}attn2.ln_q")
            move(f"{ours}attn2.norm_k", f"{x}attn2.ln_k")
            move(f"{ours}attn2.to_out.0", f"{x}attn2.proj")
        move(f"{ours}norm1.linear", f"{x}adaLN_modulation.1")
        move(f"{ours}norm1_context.linear", f"{context}adaLN_modulation.1", _swap_halves if last else None)
        move(f"{ours}ff.net.0.proj", f"{x}mlp.fc1")
        move(f"{ours}ff.net.2", f"{x}mlp.fc2")
        move(f"{ours}ff_context.net.0.proj", f"{context}mlp.fc1")
        move(f"{ours}ff_context.net.2", f"{context}mlp.fc2")
    move("proj_out", "final_layer.linear")
    move("norm_out.linear", "final_layer.adaLN_modulation.1", _swap_halves)
    assert not state, f"not mapped: {sorted(state)}"
    return {f"model.diffusion_model.{name}": tensor.contiguous() for name, tensor in out.items()}


def flux_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in Black Forest Labs' original layout
    (``double_blocks``/``single_blocks``, fused qkv, ``img_in``...), as flux1-dev.safetensors
    ships it: the inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers."""
    renamer = _Renamer(state)
    state, out, move, fuse = renamer.state, renamer.out, renamer.move, renamer.fuse

    for ours, original in (("timestep_embedder", "time_in"), ("text_embedder", "vector_in"),
                           ("guidance_embedder", "guidance_in")):
        move(f"time_text_embed.{ours}.linear_1", f"{original}.in_layer")
        move(f"time_text_embed.{ours}.linear_2", f"{original}.out_layer")
    move("context_embedder", "txt_in")
    move("x_embedder", "img_in")
    double = {int(name.split(".")[1]) for name in state if name.startswith("transformer_blocks.")}
    for i in sorted(double):
        ours, original = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        move(f"{ours}norm1.linear", f"{original}img_mod.lin")
        move(f"{ours}norm1_context.linear", f"{original}txt_mod.lin")
        fuse([f"{ours}attn.to_{p}" for p in "qkv"], f"{original}img_attn.qkv")
        fuse([f"{ours}attn.add_{p}_proj" for p in "qkv"], f"{original}txt_attn.qkv")
        for norm, name in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                           ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{original}{name}.scale"] = state.pop(f"{ours}attn.{norm}.weight")
        move(f"{ours}ff.net.0.proj", f"{original}img_mlp.0")
        move(f"{ours}ff.net.2", f"{original}img_mlp.2")
        move(f"{ours}ff_context.net.0.proj", f"{original}txt_mlp.0")
        move(f"{ours}ff_context.net.2", f"{original}txt_mlp.2")
        move(f"{ours}attn.to_out.0", f"{original}img_attn.proj")
        move(f"{ours}attn.to_add_out", f"{original}txt_attn.proj")
    single = {int(name.split(".")[1]) for name in state if name.startswith("single_transformer_blocks.")}
    for i in sorted(single):
        ours, original = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        move(f"{ours}norm.linear", f"{original}modulation.lin")
        fuse([f"{ours}attn.to_q", f"{ours}attn.to_k", f"{ours}attn.to_v", f"{ours}proj_mlp"], f"{original}linear1")
        out[f"{original}norm.query_norm.scale"] = state.pop(f"{ours}attn.norm_q.weight")
        out[f"{original}norm.key_norm.scale"] = state.pop(f"{ours}attn.norm_k.weight")
        move(f"{ours}proj_out", f"{original}linear2")
    move("proj_out", "final_layer.linear")
    move("norm_out.linear", "final_layer.adaLN_modulation.1", _swap_halves)
    assert not state, f"not mapped: {sorted(state)}"
    return {f"model.diffusion_model.{name}": tensor.contiguous() for name, tensor in out.items()}
