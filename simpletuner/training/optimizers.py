"""Building the optimizer named by ``--optimizer`` from a well-kept library.

Each choice is one :class:`OptimizerSpec`: where the class lives, the
defaults SimpleTuner users expect, and the hardware it needs.  The shared
options (learning rate, weight decay, epsilon, betas) are passed only to
optimizers that accept them; ``--optimizer_config k=v,...`` overrides any
constructor argument and is checked against the real signature.

This module imports nothing heavy at import time, so validation can read
the hardware requirements without loading torch.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from simpletuner.errors import ConfigError

CUDA = "an NVIDIA GPU (CUDA)"
CUDA_FP8 = "an NVIDIA GPU with fp8 support (Ada/Hopper or newer, compute capability 8.9+)"


@dataclass(frozen=True)
class OptimizerSpec:
    target: str  # "module:Class"
    defaults: dict = field(default_factory=dict)
    requires: Optional[str] = None  # hardware, in words; None runs anywhere
    schedule_free: bool = False


_SCHEDULE_FREE = "simpletuner.training.schedulefree_kahan:AdamWScheduleFreeKahan"


def _bnb(name: str, requires: Optional[str] = None) -> OptimizerSpec:
    return OptimizerSpec(f"bitsandbytes.optim:{name}", requires=requires)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    # torch-optimi's AdamW turns Kahan summation on by itself for bf16 weights,
    # which is what "adamw_bf16" promises: AdamW that stays accurate in bf16.
    "adamw_bf16": OptimizerSpec("optimi:AdamW", {"betas": (0.9, 0.999), "foreach": False}),
    "optimi-adamw": OptimizerSpec("optimi:AdamW", {"foreach": False}),
    "optimi-adam": OptimizerSpec("optimi:Adam", {"foreach": False}),
    "optimi-stableadamw": OptimizerSpec("optimi:StableAdamW", {"foreach": False}),
    "optimi-lion": OptimizerSpec("optimi:Lion", {"foreach": False}),
    "optimi-radam": OptimizerSpec("optimi:RAdam", {"foreach": False}),
    "optimi-ranger": OptimizerSpec("optimi:Ranger", {"foreach": False}),
    "optimi-adan": OptimizerSpec("optimi:Adan", {"foreach": False}),
    "optimi-sgd": OptimizerSpec("optimi:SGD", {"foreach": False}),
    "ao-adamw8bit": OptimizerSpec("torchao.optim:AdamW8bit"),
    "ao-adamw4bit": OptimizerSpec("torchao.optim:AdamW4bit"),
    "ao-adamfp8": OptimizerSpec("torchao.optim:AdamFp8", requires=CUDA_FP8),
    "ao-adamwfp8": OptimizerSpec("torchao.optim:AdamWFp8", requires=CUDA_FP8),
    # Schedule-free AdamW from the schedulefree package, with Kahan summation for
    # bf16/fp16 weights.  +aggressive keeps less weight decay and a larger epsilon
    # (the settings SimpleTuner ships); +no_kahan is that without the summation,
    # saving two weight-sized buffers per low-precision tensor.
    "adamw_schedulefree": OptimizerSpec(_SCHEDULE_FREE, {"warmup_steps": 0}, schedule_free=True),
    "adamw_schedulefree+aggressive": OptimizerSpec(
        _SCHEDULE_FREE, {"warmup_steps": 0, "weight_decay": 1e-3, "eps": 1e-6}, schedule_free=True
    ),
    "adamw_schedulefree+no_kahan": OptimizerSpec(
        _SCHEDULE_FREE, {"warmup_steps": 0, "weight_decay": 1e-3, "eps": 1e-6, "kahan_sum": False}, schedule_free=True
    ),
    "soap": OptimizerSpec("pytorch_optimizer:SOAP"),
    "prodigy": OptimizerSpec("prodigyopt:Prodigy", {"d_coef": 1.0, "safeguard_warmup": False}),
    "bnb-adagrad": _bnb("Adagrad"),
    "bnb-adagrad8bit": _bnb("Adagrad8bit"),
    "bnb-adam": _bnb("Adam"),
    "bnb-adam8bit": _bnb("Adam8bit"),
    "bnb-adamw": _bnb("AdamW"),
    "bnb-adamw8bit": _bnb("AdamW8bit"),
    "bnb-adamw-paged": _bnb("PagedAdamW", CUDA),
    "bnb-adamw8bit-paged": _bnb("PagedAdamW8bit", CUDA),
    "bnb-lion": _bnb("Lion"),
    "bnb-lion8bit": _bnb("Lion8bit"),
    "bnb-lion-paged": _bnb("PagedLion", CUDA),
    "bnb-lion8bit-paged": _bnb("PagedLion8bit", CUDA),
    "bnb-ademamix": _bnb("AdEMAMix"),
    "bnb-ademamix8bit": _bnb("AdEMAMix8bit"),
    "bnb-ademamix-paged": _bnb("PagedAdEMAMix", CUDA),
    "bnb-ademamix8bit-paged": _bnb("PagedAdEMAMix8bit", CUDA),
}


def hardware_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot run on this machine, or None when it can."""
    spec = OPTIMIZERS.get(name)
    if spec is None or spec.requires is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return f"--optimizer={name} needs {spec.requires}; none is available here"
    if spec.requires == CUDA_FP8 and torch.cuda.get_device_capability() < (8, 9):
        return f"--optimizer={name} needs {spec.requires}"
    return None


def parse_optimizer_config(text: Optional[str]) -> dict[str, Any]:
    """``"d_coef=0.5,betas=(0.9,0.99),decouple=true"`` -> keyword arguments."""
    if not text:
        return {}
    result: dict[str, Any] = {}
    for part in _split_top_level(text):
        if "=" not in part:
            raise ConfigError(f"--optimizer_config: {part!r} is not key=value")
        key, raw = (s.strip() for s in part.split("=", 1))
        lowered = raw.lower()
        if lowered in ("true", "false"):
            result[key] = lowered == "true"
            continue
        try:
            result[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            result[key] = raw
    return result


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets (betas=(0.9,0.99))."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def optimizer_class(name: str) -> Any:
    module_name, class_name = OPTIMIZERS[name].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def optimizer_kwargs(name: str, config: Any, learning_rate: float) -> dict[str, Any]:
    """Constructor arguments: spec defaults < shared options < --optimizer_config."""
    cls = optimizer_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    kwargs = dict(OPTIMIZERS[name].defaults)
    kwargs["lr"] = learning_rate
    if OPTIMIZERS[name].schedule_free:
        # Schedule-free optimizers warm up themselves; the lr schedule stays constant.
        kwargs["warmup_steps"] = config.lr_warmup_steps
    shared = {"weight_decay": ("adam_weight_decay", config.adam_weight_decay),
              "eps": ("adam_epsilon", config.adam_epsilon)}
    # A spec's own value (a variant's preset) beats a shared option's default,
    # never a value the user set.  Configs without the record count as set.
    explicit = getattr(config, "explicit", None)
    for key, (option, value) in shared.items():
        if key in accepted and (key not in kwargs or explicit is None or option in explicit):
            kwargs[key] = value
    if "betas" in accepted and (config.optimizer_beta1 is not None or config.optimizer_beta2 is not None):
        default_betas = kwargs.get("betas") or _signature_default(cls, "betas") or (0.9, 0.999)
        kwargs["betas"] = (
            config.optimizer_beta1 if config.optimizer_beta1 is not None else default_betas[0],
            config.optimizer_beta2 if config.optimizer_beta2 is not None else default_betas[1],
        )
    overrides = parse_optimizer_config(config.optimizer_config)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ConfigError(
            f"--optimizer_config: {', '.join(unknown)} not accepted by {name} "
            f"(it takes: {', '.join(sorted(accepted))})"
        )
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if k in accepted}


def _signature_default(cls: Any, parameter: str) -> Any:
    value = inspect.signature(cls.__init__).parameters.get(parameter)
    return None if value is None or value.default is inspect.Parameter.empty else value.default


def build_optimizer(params: Iterable[Any], config: Any, learning_rate: float) -> Any:
    name = config.optimizer
    return optimizer_class(name)(list(params), **optimizer_kwargs(name, config, learning_rate))


def set_optimizer_mode(optimizer: Any, training: bool) -> None:
    """Schedule-free optimizers keep two weight sequences; eval() puts the
    averaged one (the one to validate and save) into the parameters."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    method = getattr(inner, "train" if training else "eval", None)
    if callable(method):
        method()


def is_schedule_free(name: str) -> bool:
    spec = OPTIMIZERS.get(name)
    return spec is not None and spec.schedule_free
