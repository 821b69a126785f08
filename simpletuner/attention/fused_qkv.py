"""``--fused_qkv_projections``: diffusers' ``fuse_qkv_projections()`` on the denoiser.

diffusers fuses an attention block's query, key and value Linears into one
(``to_qkv``; ``to_kv`` for cross-attention, whose query stays separate;
``to_added_qkv`` for the text stream of SD3/Flux) by concatenating their
weights, and its fused processors split the output with ``chunk``.  It keeps
the separate Linears, and its ``unfuse_qkv_projections()`` only drops the
fused ones: whatever was trained into them would be lost.  So here the
separate weights become views of the fused weight's rows right after fusing.
Training updates the fused weight in place, the separate Linears always show
the trained values, memory is not doubled, and a model in the unfused
layout is simply the state dict without the fused Linears.

A LoRA trained on a fused Linear is saved as the exactly equivalent LoRAs on
the separate ones: the same ``lora_A`` for each, ``lora_B`` (and DoRA's
magnitude) split by rows, the way the fused processors split the output.
The saved file loads on the ordinary, unfused base model in diffusers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from simpletuner.errors import ConfigError

# Fused Linear -> the separate Linears whose weights it concatenates, in order.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}
# Tensors of a LoRA on a fused Linear that hold one block of rows per part.
_ROW_SPLIT = ("lora_B", "lora_magnitude_vector")


def fused_modules(denoiser: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, str]]:
    """(path of the attention block, the block, the fused Linear's name) for each fused Linear."""
    for path, module in denoiser.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        for fused in FUSED_PARTS:
            if isinstance(module._modules.get(fused), torch.nn.Module):
                yield path, module, fused


def fuse(denoiser: torch.nn.Module) -> int:
    """Fuse with diffusers, then make the separate weights views of the fused ones; returns the fused count."""
    denoiser.fuse_qkv_projections()
    count = 0
    for _, block, fused in fused_modules(denoiser):
        whole = getattr(block, fused)
        parts = [getattr(block, name) for name in FUSED_PARTS[fused]]
        for tensor_name in ("weight", "bias"):
            if getattr(whole, tensor_name, None) is None:
                continue
            rows = getattr(whole, tensor_name).data.chunk(len(parts), dim=0)
            for part, view in zip(parts, rows):
                getattr(part, tensor_name).data = view
        count += 1
    return count


def freeze_separate(denoiser: torch.nn.Module) -> None:
    """The separate Linears of a fused block never run: keep them out of training (a full fine-tune)."""
    for _, block, fused in fused_modules(denoiser):
        for name in FUSED_PARTS[fused]:
            getattr(block, name).requires_grad_(False)


def separate_parameters(denoiser: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights and biases of the separate Linears of fused blocks: views of the fused ones."""
    return [p for _, block, fused in fused_modules(denoiser) for name in FUSED_PARTS[fused]
            for p in getattr(block, name).parameters()]


def is_fused(denoiser: torch.nn.Module) -> bool:
    return any(True for _ in fused_modules(denoiser))


def unfused_state_dict(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The denoiser's weights in the ordinary layout (the fused Linears left out)."""
    fused_prefixes = tuple(f"{path}.{fused}." if path else f"{fused}." for path, _, fused in fused_modules(denoiser))
    state = denoiser.state_dict()
    return {k: v for k, v in state.items() if not (fused_prefixes and k.startswith(fused_prefixes))}


def load_unfused(denoiser: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ordinary-layout weights; through the views they land in the fused Linears too."""
    result = denoiser.load_state_dict(state, strict=False)
    fused_prefixes = tuple(f"{path}.{fused}." if path else f"{fused}." for path, _, fused in fused_modules(denoiser))
    missing = [k for k in result.missing_keys if not (fused_prefixes and k.startswith(fused_prefixes))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights do not match the model: missing {missing[:3]}, unexpected "
                           f"{result.unexpected_keys[:3]}")


@contextmanager
def unfused(denoiser: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The denoiser without its fused Linears, for ``save_pretrained``: it saves as an ordinary model.

    The fused Linears (and the optimizer's hold on them) are put back after.
    """
    taken = [(block, fused, block._modules.pop(fused)) for _, block, fused in list(fused_modules(denoiser))]
    try:
        yield denoiser
    finally:
        for block, fused, module in taken:
            block._modules[fused] = module


# ----------------------------------------------------------------- LoRA


def lora_targets(denoiser: torch.nn.Module, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The LoRA targets of a fused denoiser: the fused Linear wherever all its parts were targeted.

    ``targets`` are PEFT-style names (a module matches when its path equals
    or ends with ``.`` + the name).  A block where only some parts of a
    fused Linear are targeted cannot be trained the same way fused, so it is
    refused.  Returns full module paths.
    """
    def targeted(path: str) -> bool:
        return any(path == t or path.endswith("." + t) for t in targets)

    fused_paths: dict[str, str] = {}  # separate Linear path -> fused Linear path
    for path, _, fused in fused_modules(denoiser):
        prefix = f"{path}." if path else ""
        parts = [prefix + name for name in FUSED_PARTS[fused]]
        chosen = [p for p in parts if targeted(p)]
        if chosen and len(chosen) != len(parts):
            raise ConfigError(
                f"--fused_qkv_projections: the LoRA targets {', '.join(p.rsplit('.', 1)[1] for p in chosen)} "
                f"but not all of {', '.join(FUSED_PARTS[fused])} in {path}, which are one fused Linear; target "
                "all of them (or none) in --lora_target_modules, or drop --fused_qkv_projections"
            )
        for part in chosen:
            fused_paths[part] = prefix + fused
    result: list[str] = []
    for path, module in denoiser.named_modules():
        if not path or not targeted(path):
            continue
        name = fused_paths.get(path, path)
        if name not in result:
            result.append(name)
    return tuple(result)


def split_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA state (PEFT or diffusers key names) with each fused Linear's LoRA as its parts' LoRAs.

    ``W x`` through a fused Linear with LoRA ``B A`` is ``[Wq; Wk; Wv] x + [Bq; Bk; Bv] A x``:
    exactly the three LoRAs ``Bq A``, ``Bk A``, ``Bv A``.
    """
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        found = _fused_in_key(key)
        if found is None:
            result[key] = value
            continue
        fused, tensor = found
        parts = FUSED_PARTS[fused]
        if tensor.startswith("lora_A"):
            pieces = [value.clone() for _ in parts]  # copies: safetensors refuses shared storage
        elif tensor.startswith(_ROW_SPLIT):
            pieces = list(value.chunk(len(parts), dim=0))
        else:
            raise ValueError(f"{key}: no rule to split this adapter tensor of a fused projection")
        for part, piece in zip(parts, pieces):
            result[key.replace(f".{fused}.", f".{part}.", 1)] = piece.contiguous()
    return result


def check_saved_layout(state: dict[str, torch.Tensor], denoiser: torch.nn.Module, where: object) -> None:
    """Refuse a LoRA checkpoint (PEFT keys) whose fusing differs from this run's (``where`` names it).

    Fused -> unfused could be mapped exactly (:func:`split_lora_state`), but not
    the other way (three separate ``lora_A`` are not one), and the optimizer
    state follows the parameters' shapes in neither; so both are refused.
    A checkpoint whose LoRA targets no q/k/v is the same either way and passes.
    """
    saved = any(_fused_in_key(key) is not None for key in state)
    now = is_fused(denoiser)
    if now and not saved and any(_unfused_part_in_key(key) for key in state):
        raise ConfigError(f"{where} was saved without --fused_qkv_projections; resume it without "
                          "--fused_qkv_projections")
    if saved and not now:
        raise ConfigError(f"{where} was saved with --fused_qkv_projections; resume it with --fused_qkv_projections")


def _unfused_part_in_key(key: str) -> bool:
    """Whether ``key`` belongs to a projection that fusing merges (to_q/to_k/to_v, add_*_proj)."""
    parts = {part for names in FUSED_PARTS.values() for part in names}
    return any(name in parts for name in key.split(".")[1:-1])


def _fused_in_key(key: str) -> Optional[tuple[str, str]]:
    """(fused Linear name, the rest of the key) when ``key`` belongs to a fused Linear."""
    names = key.split(".")
    for index, name in enumerate(names[:-1]):
        if index and name in FUSED_PARTS:
            return name, ".".join(names[index + 1:])
    return None
