"""Loading a denoiser that ``--base_model_precision`` quantises, one block at a time.

diffusers loads bf16 weights as views of the memory-mapped safetensors file;
quantising the loaded model then reads every weight while the whole mapping
stays resident (any unquantised norm or convolution still points into it), so
the peak is the bf16 file plus the quantised copies.  Here the model is built
on the meta device and filled block by block instead: each block's tensors are
read with ``safe_open`` (opened and closed per block, so the mapping goes
away), copied out of it, cast, and the block is quantised before the next one
is read.  The peak is then the quantised model plus about one block in bf16.

The result is the same model, bit for bit, as loading whole and then calling
``place()`` (tests/test_quantisation_streaming.py checks that).  What cannot be
streamed (a Hub id, ``.bin`` weights, nf4-bnb, unquantised runs) goes the old
way.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from simpletuner.errors import ModelError
from simpletuner.quantisation.apply import place, quantise_under, quantised_layer_names
from simpletuner.quantisation.precisions import get_precision

logger = logging.getLogger(__name__)

# A block is the largest module holding at most this many parameters (128 MiB
# in bf16): SDXL's 1280-wide transformer blocks (35 M) or one Flux block fit whole.
BLOCK_PARAMETERS = 64 * 2**20
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_placed_denoiser(family: Any, source: Any, precision: str, device: Any, dtype: torch.dtype,
                         via: str = "cpu") -> torch.nn.Module:
    """The family's denoiser, frozen, cast to ``dtype``, quantised under ``precision`` and on ``device``."""
    files = None
    if get_precision(precision).backend in ("quanto", "torchao"):
        folder = source.local_folder(family.denoiser_component)
        files = weight_files(folder, source.variant) if folder is not None else None
    if files is None:
        denoiser = family.load_denoiser(source)
        denoiser.requires_grad_(False)
        return place(denoiser, precision, family.quantisation_exclude, device, dtype, via)
    import diffusers

    model_class = getattr(diffusers, family.denoiser_class_name)
    denoiser = load_quantised(model_class, folder, files, precision, family.quantisation_exclude, device, dtype, via)
    family.denoiser_loaded(denoiser)
    return denoiser


def weight_files(folder: Path, variant: Optional[str] = None) -> Optional[dict[str, Path]]:
    """Each tensor name of a diffusers component folder mapped to its safetensors file.

    Reads the shard index when there is one; None when the folder holds no
    safetensors weights (a ``.bin`` checkpoint), which the caller loads whole.
    """
    index = folder / _with_variant(f"{_WEIGHTS}.index.json", variant)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / _with_variant(_WEIGHTS, variant)
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(single, framework="pt") as handle:
        return {name: single for name in handle.keys()}


def _with_variant(name: str, variant: Optional[str]) -> str:
    # diffusers' own rule: the variant goes before the last suffix.
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def load_quantised(model_class: Any, folder: Path, files: dict[str, Path], precision: str,
                   exclude: tuple[str, ...], device: Any, dtype: torch.dtype, via: str = "cpu",
                   block_parameters: int = BLOCK_PARAMETERS) -> torch.nn.Module:
    """Build ``model_class`` from ``folder``'s config on the meta device and fill and quantise it block by block."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_class.from_config(model_class.load_config(folder))
    # Casts the meta parameters (free) and the buffers the constructor made,
    # as place() casts the whole loaded model.
    model.to(dtype=dtype).requires_grad_(False).eval()
    staging = torch.device(device) if via == "accelerator" else torch.device("cpu")
    blocks = 0
    for prefix, block, whole in blocks_of(model, block_parameters):
        _fill(block, prefix, whole, files, dtype, staging, folder)
        # Assigned tensors come in trainable, as the whole path's are frozen before quantising.
        block.requires_grad_(False)
        if whole:
            # Only whole modules can hold a Linear; a parent's own tensors are never one.
            quantise_under(model, precision, exclude, prefix or None)
        blocks += 1
        _return_freed_memory()
    logger.info("loaded %s in %d blocks and quantised %d layers to %s", model_class.__name__, blocks,
                len(quantised_layer_names(model)), precision)
    return model.to(device)


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc only; elsewhere nothing).

    Each block's bf16 copies and quantisation temporaries are freed, but glibc
    keeps freed heap memory for reuse, and the long-lived quantised tensors
    allocated in between fragment it so it is seldom reused: without this, the
    SDXL UNet's int8 load peaked at 7.9 GiB instead of 2.9 GiB (4.8 GiB in bf16).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def blocks_of(module: torch.nn.Module, limit: int, prefix: str = "") -> Iterator[tuple[str, torch.nn.Module, bool]]:
    """``(name, module, whole)`` covering every tensor once, depth first.

    A module of at most ``limit`` parameters (or without children) is one
    block (``whole``); a larger one yields its own direct tensors, if any, as a
    block (``whole`` False) and then its children's blocks.
    """
    children = list(module.named_children())
    if not children or sum(p.numel() for p in module.parameters()) <= limit:
        yield prefix, module, True
        return
    if any(True for _ in chain(module.parameters(recurse=False), module.buffers(recurse=False))):
        yield prefix, module, False
    for name, child in children:
        yield from blocks_of(child, limit, f"{prefix}.{name}" if prefix else name)


def _fill(block: torch.nn.Module, prefix: str, whole: bool, files: dict[str, Path], dtype: torch.dtype,
          device: torch.device, folder: Path) -> None:
    """Read ``block``'s tensors from the files as real copies (never views of the mapping) and assign them."""
    from safetensors import safe_open

    names = [name for name in block.state_dict(keep_vars=True) if whole or "." not in name]
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in names:
        full = f"{prefix}.{name}" if prefix else name
        if full not in files:
            raise ModelError(f"{folder}: the weights lack {full}; the folder does not hold a complete model "
                             "of the class its config.json names (re-export or re-download it)")
        by_file[files[full]].append(name)
    state: dict[str, torch.Tensor] = {}
    for path, local_names in by_file.items():
        # Opened per block: once its tensors are copied, nothing points into the mapping.
        with safe_open(path, framework="pt") as handle:
            for name in local_names:
                tensor = handle.get_tensor(f"{prefix}.{name}" if prefix else name)
                state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None,
                                        copy=True)
                del tensor
    block.load_state_dict(state, strict=False, assign=True)
