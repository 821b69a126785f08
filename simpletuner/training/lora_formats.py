"""The key layouts a trained LoRA is saved in (``--lora_format``).

``diffusers`` is what ``save_lora_weights`` writes: ``unet.``/``transformer.``
prefixed module paths, the adapter's rank and alpha in the file header.

``comfyui`` is the kohya layout that ComfyUI, A1111 and Forge read: one entry
per trained module, named ``<prefix>_<module path with dots as underscores>``,
holding ``lora_down.weight`` (PEFT's A), ``lora_up.weight`` (PEFT's B) and a
scalar ``alpha``; the loader scales the product by ``alpha / rank``.  Which
prefix a family's loader converts back (``lora_unet`` for UNets,
``lora_transformer`` for Flux) is the family's ``kohya_lora_prefix``.

Both layouts are written as ``pytorch_lora_weights.safetensors``, the name
``load_lora_weights(folder)`` looks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from simpletuner.errors import ModelError
from simpletuner.training.adapters import lora_alpha

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# The suffixes an adapter's down (A) and up (B) matrices carry, in PEFT's and
# in diffusers' older naming (what convert_state_dict_to_diffusers produces;
# lora_linear_layer for text encoders).
_DOWN_SUFFIXES = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
_UP_SUFFIXES = (".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")


def adapter_metadata(config: Any, state: dict[str, torch.Tensor]) -> Optional[dict[str, Any]]:
    """Rank, alpha and target modules for a diffusers-layout file's header, so
    ``load_lora_weights`` applies the trained alpha (without them it assumes
    alpha = rank)."""
    if config is None:
        return None
    dora = {key for key in state if "lora_magnitude_vector" in key}
    return {
        "r": config.lora_rank,
        "lora_alpha": lora_alpha(config),
        "target_modules": sorted(module_weights({k: v for k, v in state.items() if k not in dora})),
        # The loader builds its LoraConfig from this header alone, so a DoRA
        # file must say so or its magnitudes would be dropped as unexpected keys.
        "use_dora": bool(dora),
    }


def module_weights(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (down, up)} from a PEFT- or diffusers-named adapter state."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for suffixes, target in ((_DOWN_SUFFIXES, downs), (_UP_SUFFIXES, ups)):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix is not None:
                target[key[: -len(suffix)]] = tensor
                break
        else:
            # Anything else (DoRA magnitudes, biases) has no kohya equivalent here;
            # dropping it would change what the file does.
            raise ModelError(f"LoRA weight {key!r} has no place in the kohya layout; use --lora_format diffusers")
    if downs.keys() != ups.keys():
        unmatched = sorted(downs.keys() ^ ups.keys())
        raise ModelError(f"LoRA modules without both down and up weights: {unmatched[:3]}")
    return {module: (downs[module], ups[module]) for module in downs}


def kohya_name(prefix: str, module: str) -> str:
    return f"{prefix}_{module.replace('.', '_')}"


def to_kohya(state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """The adapter state in the kohya layout, every module carrying its alpha."""
    result: dict[str, torch.Tensor] = {}
    for module, (down, up) in sorted(module_weights(state).items()):
        name = kohya_name(prefix, module)
        result[f"{name}.lora_down.weight"] = down.detach().cpu().contiguous()
        result[f"{name}.lora_up.weight"] = up.detach().cpu().contiguous()
        result[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return result


def save_kohya_lora(output_dir: Path, state: dict[str, torch.Tensor], prefix: Optional[str], config: Any) -> Path:
    """Write ``state`` in the kohya layout to ``output_dir``; returns the file."""
    from safetensors.torch import save_file

    if prefix is None:
        raise ModelError("--lora_format=comfyui is not available for this model family; use --lora_format diffusers")
    alpha = lora_alpha(config)
    weights = to_kohya(state, prefix, alpha)
    ranks = {int(t.shape[0]) for k, t in weights.items() if k.endswith(".lora_down.weight")}
    # The ss_ fields are what kohya's scripts write; A1111 and Forge show them.
    metadata = {"format": "pt", "ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "dynamic"}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LORA_WEIGHT_NAME
    save_file(weights, str(path), metadata=metadata)
    return path


def modules_diffusers_recovers(pipeline_class: Any, weights: dict[str, torch.Tensor], component: str) -> set[str]:
    """The denoiser modules ``pipeline_class.load_lora_weights`` would give
    LoRA layers when handed ``weights``: its own key conversion, read back."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    converted = pipeline_class.lora_state_dict(dict(weights))
    if isinstance(converted, tuple):  # UNet pipelines also return the alphas
        converted = converted[0]
    prefix = f"{component}."
    own = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
    if own and not any("lora_A" in k for k in own):
        own = convert_unet_state_dict_to_peft(own)
    return {k.split(".lora_A")[0] for k in own if ".lora_A" in k}


def check_kohya_layout(family: Any, state: dict[str, torch.Tensor]) -> None:
    """Fail before training when diffusers would not map every trained module
    back from its kohya name (a module name its converter does not know)."""
    if family.kohya_lora_prefix is None:
        raise ModelError(
            f"--lora_format=comfyui is not available for --model_family={family.name}; use --lora_format diffusers"
        )
    trained = set(module_weights(state))
    weights = to_kohya(state, family.kohya_lora_prefix, 1.0)
    try:
        recovered = modules_diffusers_recovers(family.pipeline_class(), weights, family.denoiser_component)
    except (ValueError, KeyError, NotImplementedError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"--lora_format=comfyui: diffusers cannot read these LoRA targets back from the kohya layout "
            f"({first_line}); choose other --lora_target_modules or use --lora_format diffusers"
        ) from None
    wrong = sorted(trained ^ recovered)
    if wrong:
        raise ModelError(
            f"--lora_format=comfyui: diffusers maps {len(wrong)} kohya-named module(s) onto the wrong layer "
            f"(e.g. {wrong[0]}); choose other --lora_target_modules or use --lora_format diffusers"
        )
