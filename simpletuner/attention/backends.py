"""The attention mechanisms ``--attention_mechanism`` offers, and where each can run.

Every mechanism is diffusers' own: a backend of its attention dispatcher
(``diffusers.models.attention_dispatch``), or for ``xformers`` on families
whose processors do not use the dispatcher, diffusers' xformers processors.
This table says which package and which hardware each one needs, so config
validation refuses a mechanism that cannot run with one line (exit code 2)
before anything loads, and ``simpletuner.attention.docs`` prints it.

Which families route attention through the dispatcher is a fact of the
diffusers version (checked on 0.42): only Flux's ``FluxAttnProcessor`` calls
``dispatch_attention_fn``.  The UNet families (sdxl, legacy, kolors), PixArt
and SD3 use ``AttnProcessor2_0`` / ``JointAttnProcessor2_0``, which call
``torch.nn.functional.scaled_dot_product_attention`` directly, so on them a
dispatcher backend would silently do nothing; those combinations are refused.
A family says which it is with ``ModelFamily.attention_dispatch``.

Import-light: the hardware is passed in and packages are looked up by
metadata, so validation pays for no torch import on the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata, util
from typing import Optional

from simpletuner.quantisation.matrix import CPU, MPS, Hardware

DEFAULT = "diffusers"
SAGEATTENTION = "sageattention"
ANY_CAPABILITY = (0, 0)


@dataclass(frozen=True)
class Mechanism:
    """One ``--attention_mechanism`` choice.

    ``backend`` is diffusers' ``AttentionBackendName`` value (None: leave
    diffusers' default, PyTorch SDPA).  ``module`` / ``package`` /
    ``min_version``: the import that must work and the pip package that
    provides it.  ``cuda``: lowest compute capability (None: not on CUDA).
    ``half_only``: the kernel takes only bf16/fp16 queries.  ``masks``: it
    accepts attention masks (Flux's --flux_attention_masked_training).
    ``dispatch_only``: it exists only as a dispatcher backend.
    """

    name: str
    backend: Optional[str]
    summary: str
    cpu: bool
    cuda: Optional[tuple[int, int]]
    mps: bool
    module: Optional[str] = None
    package: Optional[str] = None
    min_version: Optional[str] = None
    half_only: bool = False
    masks: bool = True
    dispatch_only: bool = True
    hardware_why: str = ""


# Versions are diffusers' own minimums (attention_dispatch._REQUIRED_*_VERSION).
MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism(DEFAULT, None, "PyTorch scaled_dot_product_attention (diffusers' default)", True, ANY_CAPABILITY, True,
              dispatch_only=False),
    Mechanism("xformers", "xformers", "Meta's xformers memory-efficient attention", False, ANY_CAPABILITY, False,
              module="xformers", package="xformers", min_version="0.0.29", dispatch_only=False,
              hardware_why="xformers' attention kernels are CUDA kernels"),
    Mechanism(SAGEATTENTION, "sage", "SageAttention (quantised QK; no backward pass)", False, (8, 0), False,
              module="sageattention", package="sageattention", min_version="2.1.1", half_only=True, masks=False,
              hardware_why="SageAttention's kernels need a CUDA GPU of compute capability 8.0+"),
    Mechanism("flash", "flash", "Flash Attention 2 (flash-attn)", False, (8, 0), False,
              module="flash_attn", package="flash-attn", min_version="2.6.3", half_only=True, masks=False,
              hardware_why="Flash Attention 2 needs an Ampere or newer CUDA GPU (compute capability 8.0+)"),
    Mechanism("flash_varlen", "flash_varlen", "Flash Attention 2, variable-length kernel (takes masks)", False,
              (8, 0), False, module="flash_attn", package="flash-attn", min_version="2.6.3", half_only=True,
              hardware_why="Flash Attention 2 needs an Ampere or newer CUDA GPU (compute capability 8.0+)"),
    Mechanism("flash_3", "_flash_3", "Flash Attention 3 (Hopper)", False, (9, 0), False,
              module="flash_attn_interface", package="flash-attn 3 (built from the hopper/ folder of "
              "Dao-AILab/flash-attention)", half_only=True, masks=False,
              hardware_why="Flash Attention 3 runs only on Hopper GPUs (H100/H200, compute capability 9.0)"),
    Mechanism("flash_varlen_3", "_flash_varlen_3", "Flash Attention 3, variable-length kernel", False, (9, 0), False,
              module="flash_attn_interface", package="flash-attn 3 (built from the hopper/ folder of "
              "Dao-AILab/flash-attention)", half_only=True,
              hardware_why="Flash Attention 3 runs only on Hopper GPUs (H100/H200, compute capability 9.0)"),
    Mechanism("native_cudnn", "_native_cudnn", "PyTorch SDPA restricted to the cuDNN kernel", False, (8, 0), False,
              half_only=True,
              hardware_why="PyTorch's cuDNN attention needs a CUDA GPU of compute capability 8.0+"),
    Mechanism("native_flash", "_native_flash", "PyTorch SDPA restricted to its built-in flash kernel", False, (8, 0),
              False, half_only=True, masks=False,
              hardware_why="PyTorch's flash kernel needs an Ampere or newer CUDA GPU (compute capability 8.0+)"),
    Mechanism("native_efficient", "_native_efficient", "PyTorch SDPA restricted to the memory-efficient kernel",
              False, ANY_CAPABILITY, False,
              hardware_why="PyTorch has no memory-efficient attention kernel for the CPU or MPS"),
    Mechanism("native_math", "_native_math", "PyTorch SDPA restricted to the math (reference) kernel", True,
              ANY_CAPABILITY, True),
)
MECHANISMS_BY_NAME: dict[str, Mechanism] = {m.name: m for m in MECHANISMS}
MECHANISM_NAMES: tuple[str, ...] = tuple(MECHANISMS_BY_NAME)

SAGE_TRAINING_WARNING = (
    "--sageattention_usage {usage}: SageAttention has no backward pass, so no gradient reaches the query, key "
    "and value projections; those layers stay untrained (a LoRA on them learns nothing), which can collapse "
    "the model or help only in short runs"
)


def runs_on(mechanism: Mechanism, hardware: Hardware) -> bool:
    if hardware.kind == CPU:
        return mechanism.cpu
    if hardware.kind == MPS:
        return mechanism.mps
    if mechanism.cuda is None:
        return False
    return hardware.capability is None or tuple(hardware.capability) >= mechanism.cuda


def package_problem(mechanism: Mechanism) -> Optional[str]:
    """Why the mechanism's library is not usable here (missing or too old), or None."""
    if mechanism.module is None:
        return None
    if util.find_spec(mechanism.module) is None:
        return f"needs the {mechanism.package} package, which is not installed"
    if mechanism.min_version is None:
        return None
    from packaging.version import Version

    try:
        installed = metadata.version(mechanism.package)
    except metadata.PackageNotFoundError:
        return None  # importable but not pip-installed (built from source): trust the import
    if Version(installed) < Version(mechanism.min_version):
        return f"needs {mechanism.package}>={mechanism.min_version} (diffusers' minimum), found {installed}"
    return None


def usage_phases(mechanism: str, sageattention_usage: str) -> tuple[bool, bool]:
    """Whether the mechanism applies to (training, validation).  Only SageAttention can be limited."""
    if mechanism != SAGEATTENTION:
        return True, True
    return "training" in sageattention_usage, "inference" in sageattention_usage


def problem(name: str, hardware: Hardware, *, dispatch: bool, family: str, half: bool, masked: bool,
            fused: bool) -> Optional[str]:
    """Why ``--attention_mechanism name`` cannot work for this run, or None.

    ``dispatch``: the family's attention goes through diffusers' dispatcher;
    ``half``: attention computes in bf16/fp16 (mixed precision);
    ``masked``: the run passes attention masks; ``fused``:
    --fused_qkv_projections.
    """
    mechanism = MECHANISMS_BY_NAME[name]
    if mechanism.name == DEFAULT:
        return None
    if mechanism.dispatch_only and not dispatch:
        return (f"{family}'s attention processors in diffusers call torch's scaled_dot_product_attention directly, "
                f"not diffusers' attention dispatcher, so {name} would never run; on {family} use diffusers or "
                "xformers")
    if not dispatch and fused:
        return ("diffusers' xformers processors for this family compute q, k and v separately, which would undo "
                "--fused_qkv_projections; use one of the two")
    missing = package_problem(mechanism)
    if missing:
        return f"{missing}; install it or use --attention_mechanism diffusers"
    if not runs_on(mechanism, hardware):
        return f"cannot run on {hardware.describe()}: {mechanism.hardware_why}"
    if mechanism.half_only and not half:
        return f"{name}'s kernels take only bf16/fp16 inputs; train with --mixed_precision bf16"
    if masked and not mechanism.masks:
        return (f"{name} takes no attention mask, which --flux_attention_masked_training needs; use "
                "flash_varlen, native_math or diffusers")
    return None


def check(name: str, hardware: Hardware, *, dispatch: bool, family: str, half: bool, masked: bool,
          fused: bool) -> Optional[str]:
    """One line naming the option and why it fails; None when it works."""
    found = problem(name, hardware, dispatch=dispatch, family=family, half=half, masked=masked, fused=fused)
    return f"--attention_mechanism={name}: {found}" if found else None


def cuda_cell(mechanism: Mechanism) -> str:
    if mechanism.cuda is None:
        return "no"
    return "yes" if mechanism.cuda == ANY_CAPABILITY else f"compute capability {mechanism.cuda[0]}.{mechanism.cuda[1]}+"

