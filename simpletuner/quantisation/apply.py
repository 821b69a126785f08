"""Quantising a loaded component with the backend's own library.

optimum-quanto (``quantize`` + ``freeze``), torchao (``quantize_``) and
bitsandbytes (``Linear4bit`` / ``Params4bit``, quantised when moved to the
GPU) do the work; this module only picks the backend, the modules to leave
alone (each family's ``quantisation_exclude``) and where it happens
(``--quantize_via``).  The matrix has already refused combinations that
cannot work, so nothing here second-guesses the hardware.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatch
from typing import Any, Optional, Sequence

import torch

from simpletuner.quantisation.backward import lighten_backward
from simpletuner.quantisation.precisions import get_precision

logger = logging.getLogger(__name__)

_QUANTO_WEIGHTS = {"int8-quanto": "qint8", "int4-quanto": "qint4", "int2-quanto": "qint2",
                   "fp8-quanto": "qfloat8", "fp8uz-quanto": "qfloat8_e4m3fnuz"}


def excluded(name: str, exclude: Sequence[str]) -> bool:
    """Whether module ``name`` matches one of the family's keep-unquantised patterns."""
    return any(fnmatch(name, pattern) for pattern in exclude)


def place(module: torch.nn.Module, precision: str, exclude: Sequence[str], device: Any, dtype: torch.dtype,
          via: str = "cpu") -> torch.nn.Module:
    """Cast ``module`` to ``dtype``, quantise it under ``precision`` and put it on ``device``.

    ``via=cpu`` quantises before the move, so the full-precision weights never
    occupy the accelerator; ``via=accelerator`` moves first (faster on a GPU).
    bitsandbytes always quantises during the move to the GPU.
    """
    backend = get_precision(precision).backend
    if backend == "none":
        return module.to(device, dtype=dtype)
    if backend == "bnb":
        _replace_with_nf4(module.to(dtype=dtype), exclude, dtype)
        return module.to(device)
    module.to(device if via == "accelerator" else "cpu", dtype=dtype)
    quantise(module, precision, exclude)
    return module.to(device)


def quantise(module: torch.nn.Module, precision: str, exclude: Sequence[str] = ()) -> torch.nn.Module:
    """Quantise ``module``'s Linear weights in place (quanto or torchao) and freeze them."""
    if get_precision(precision).backend == "bnb":
        raise ValueError("nf4-bnb quantises while moving to the GPU; call place()")
    quantise_under(module, precision, exclude)
    count = sum(1 for m in module.modules() if _is_quantised(m))
    logger.info("quantised %d layers of %s to %s", count, type(module).__name__, precision)
    return module


def quantise_under(module: torch.nn.Module, precision: str, exclude: Sequence[str] = (),
                   prefix: Optional[str] = None) -> None:
    """Quantise the quanto/torchao layers of ``module`` named ``prefix`` or below it (all when None).

    Names, and so ``exclude``, stay relative to ``module``: the streamed loader
    (streaming.py) quantises one loaded block of the whole denoiser at a time
    and the family's patterns mean the same as when the whole model is done.
    """
    backend = get_precision(precision).backend
    if backend == "quanto":
        import optimum.quanto as quanto

        include = None if prefix is None else [prefix, f"{prefix}.*"]
        quanto.quantize(module, weights=getattr(quanto, _QUANTO_WEIGHTS[precision]), include=include,
                        exclude=list(exclude) or None)
        quanto.freeze(module)
        _feed_contiguous_inputs(module, prefix)
    elif backend == "torchao":
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        config = Int8WeightOnlyConfig() if precision == "int8-torchao" else Float8WeightOnlyConfig()
        quantize_(module, config, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and _under(name, prefix)
                  and not excluded(name, exclude))
        # torchao's own backward would save a bf16 copy of every weight (backward.py).
        for name, layer in module.named_modules():
            if _under(name, prefix) and _is_quantised(layer):
                lighten_backward(layer)


def _under(name: str, prefix: Optional[str]) -> bool:
    return prefix is None or name == prefix or name.startswith(prefix + ".")


def _contiguous_input(_module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else args


def _feed_contiguous_inputs(module: torch.nn.Module, prefix: Optional[str] = None) -> None:
    """quanto's packed int8/int4 CPU matmuls refuse bf16 inputs that are not
    contiguous (``_weight_int8pack_mm_cpu : A must be contiguous``), which
    SDXL's permuted ``proj_in`` input is at full size; ``contiguous()`` costs
    nothing for inputs that already are.  Only layers under ``prefix`` get the
    hook, so quantising block by block registers it once per layer."""
    for name, layer in module.named_modules():
        if _under(name, prefix) and _is_quantised(layer):
            layer.register_forward_pre_hook(_contiguous_input)


def _replace_with_nf4(module: torch.nn.Module, exclude: Sequence[str], compute_dtype: torch.dtype) -> None:
    """Swap Linear layers for bitsandbytes 4-bit ones (QLoRA: nf4, double quantisation)."""
    import bitsandbytes as bnb

    for name, child in list(module.named_modules()):
        if not isinstance(child, torch.nn.Linear) or excluded(name, exclude):
            continue
        replacement = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                        compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                        device="meta")
        replacement.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                               compress_statistics=True)
        if child.bias is not None:
            replacement.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
        parent_name, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attribute, replacement)


def _is_quantised(module: torch.nn.Module) -> bool:
    # The module's own parameter: a PEFT wrapper's ``weight`` is its base layer's.
    weight = module._parameters.get("weight")
    return weight is not None and type(weight) not in (torch.Tensor, torch.nn.Parameter)


def quantised_layer_names(module: torch.nn.Module) -> list[str]:
    """Names of the modules whose weight is a quantised tensor (for tests and logs)."""
    return [name for name, m in module.named_modules() if _is_quantised(m)]
