"""FSDP2: the denoiser sharded with torch's ``fully_shard``, one group per block.

accelerate stays the launcher and owner of the process group; the sharding is
applied here, because accelerate's FSDP plugin does not engage on a CPU-only
machine (``Accelerator(cpu=True)`` stays MULTI_CPU with whole parameters).
Doing it ourselves keeps one code path, the same on CPU (gloo) and GPU (nccl).

With one process there is nothing to shard: the model stays whole and only
the checkpoint format (dcp.py) is the sharded one, so a run can move between
one and several processes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

logger = logging.getLogger(__name__)


def sharding_active(config: Any, num_processes: int) -> bool:
    """Whether the denoiser is split across processes (FSDP2 with more than one)."""
    return bool(getattr(config, "fsdp_enable", False)) and num_processes > 1


def shard_count(config: Any, num_processes: int) -> int:
    """Processes each weight is split over: all of them under FSDP2, else 1."""
    return num_processes if sharding_active(config, num_processes) else 1


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def block_class_names(config: Any, family: Any) -> tuple[str, ...]:
    """The classes that get a shard group each: the option's, else the family's."""
    if config.fsdp_auto_wrap_policy == "NO_WRAP":
        return ()
    named = config.fsdp_transformer_layer_cls_to_wrap
    return tuple(named) if named else family.fsdp_block_class_names


def size_based_groups(root: torch.nn.Module, min_num_params: int) -> list[torch.nn.Module]:
    """The modules SIZE_BASED_WRAP gives a shard group of their own, deepest first (the root not included).

    The rule of accelerate's SIZE_BASED_WRAP (torch's ``size_based_auto_wrap_policy``
    decides each module): a module is wrapped when the parameters it holds that
    are not already in a wrapped child reach ``min_num_params``; a module whose
    parameters all together stay below it is not searched further, and
    ModuleList/ModuleDict containers are never wrapped themselves.
    """
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    seen: set[int] = set()  # a module reachable twice gets one group at most: fully_shard cannot shard it twice

    def visit(module: torch.nn.Module, is_root: bool) -> tuple[list[torch.nn.Module], int]:
        if id(module) in seen:
            return [], 0
        seen.add(id(module))
        total = sum(p.numel() for p in module.parameters())
        if not size_based_auto_wrap_policy(module, recurse=True, nonwrapped_numel=total,
                                           min_num_params=min_num_params):
            return [], 0
        wrapped: list[torch.nn.Module] = []
        wrapped_numel = 0
        for child in module.children():
            groups, numel = visit(child, False)
            wrapped += groups
            wrapped_numel += numel
        if not is_root and size_based_auto_wrap_policy(module, recurse=False, nonwrapped_numel=total - wrapped_numel,
                                                       min_num_params=min_num_params):
            return wrapped + [module], total
        return wrapped, wrapped_numel

    return visit(root, True)[0]


def wrapped_modules(denoiser: torch.nn.Module, config: Any, family: Any) -> list[torch.nn.Module]:
    """The modules that get a shard group each under --fsdp_auto_wrap_policy, children before parents."""
    if config.fsdp_auto_wrap_policy == "SIZE_BASED_WRAP":
        return size_based_groups(denoiser, config.fsdp_min_num_params)
    names = block_class_names(config, family)
    blocks = [m for m in denoiser.modules() if type(m).__name__ in names and m is not denoiser]
    if names and not blocks:
        from simpletuner.errors import ConfigError

        raise ConfigError(
            f"--fsdp_transformer_layer_cls_to_wrap: the {type(denoiser).__name__} has no module of class "
            f"{', '.join(names)}; name classes it has, or use --fsdp_auto_wrap_policy NO_WRAP"
        )
    return blocks


def shard_denoiser(denoiser: torch.nn.Module, config: Any, family: Any, device: torch.device,
                   num_processes: int) -> torch.nn.Module:
    """Apply ``fully_shard`` to every block, then to the whole denoiser (in place; returned).

    Blocks first: each becomes one all-gather unit, gathered just before its
    forward (and backward) and freed after, so at most a block or two is
    whole at any time; the root group holds what is left (embeddings, norms).
    Adapter weights (LoRA) are sharded with the block they sit in.

    With --fsdp_cpu_ram_efficient_loading the non-main processes come here
    with an empty (meta-device) denoiser; once sharded, it is given memory and
    the main process's weights are sent into every process's shards
    (efficient_loading.py).
    """
    if not sharding_active(config, num_processes):
        return denoiser
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    from simpletuner.distributed import efficient_loading

    # Taken before sharding: fully_shard keeps only this process's part of each weight.
    full_state = efficient_loading.state_to_send(denoiser, config)
    mesh = init_device_mesh(device.type, (num_processes,))
    offload = CPUOffloadPolicy() if config.fsdp_cpu_offload else OffloadPolicy()
    settings = {"mesh": mesh, "reshard_after_forward": config.fsdp_reshard_after_forward, "offload_policy": offload}
    blocks = wrapped_modules(denoiser, config, family)
    for block in blocks:
        fully_shard(block, **settings)
    fully_shard(denoiser, **settings)
    logger.info("FSDP2: %s sharded over %d processes in %d block group(s) and the root (%s)",
                type(denoiser).__name__, num_processes, len(blocks), config.fsdp_auto_wrap_policy)
    efficient_loading.receive_weights(denoiser, full_state, config, device)
    return denoiser


def prepare(accelerator: Any, denoiser: torch.nn.Module, optimizer: Any, config: Any) -> tuple[Any, Any]:
    """``accelerator.prepare`` for the run; a sharded denoiser is not wrapped in DDP again."""
    if is_sharded(denoiser):
        return denoiser, accelerator.prepare(optimizer)
    return accelerator.prepare(denoiser, optimizer)


def local_bytes(tensors: Any) -> int:
    """Bytes this process holds for ``tensors``: a DTensor's local shard, a tensor's whole size."""
    from torch.distributed.tensor import DTensor

    total = 0
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def optimizer_tensors(optimizer: Any) -> list[torch.Tensor]:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return [value for state in inner.state.values() for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0]


def log_shard_sizes(denoiser: torch.nn.Module, optimizer: Any, rank: int) -> None:
    """Each process says what it holds, so a user (and the tests) can see the split."""
    from torch.distributed.tensor import DTensor

    params = list(denoiser.parameters())
    held = local_bytes(params)
    whole = sum(p.numel() * p.element_size() for p in params)  # a DTensor's numel is the global one
    state = optimizer_tensors(optimizer)
    state_held = local_bytes(state)
    state_whole = sum(t.numel() * t.element_size() for t in state)
    sharded = sum(1 for p in params if isinstance(p, DTensor))
    logger.info("FSDP2 rank %d holds parameters %d of %d bytes, optimizer state %d of %d bytes "
                "(%d of %d parameters sharded)", rank, held, whole, state_held, state_whole, sharded, len(params))


def gathered_denoiser(denoiser: torch.nn.Module, is_main: bool,
                      build_plain: Callable[[], torch.nn.Module]) -> Optional[torch.nn.Module]:
    """The trained weights in an ordinary (unsharded) module, on the main process; None elsewhere.

    Collective: every process must call it.  The trained parameters are
    gathered to the main process's CPU memory and loaded into a freshly built
    copy (``build_plain``: the base model with the adapter attached, as the
    run started), which the usual savers write as a diffusers folder or LoRA
    file.  Frozen base weights are not gathered: the fresh copy has them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(denoiser, options=options)
    if not is_main:
        return None
    plain = build_plain()
    result = plain.load_state_dict(state, strict=False)
    trained = {name for name, p in plain.named_parameters() if p.requires_grad}
    missing = trained & set(result.missing_keys)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"gathered weights do not fit the model: missing {sorted(missing)[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    return plain


# Memory estimate items FSDP2 splits over the processes (memory/estimate.py's names).
SHARDED_ITEMS = ("frozen weights", "trained weights", "gradients", "optimizer state")


def sharded_estimate(estimate: Any, processes: int) -> Any:
    """The per-process memory estimate when the model is sharded over ``processes``.

    Activations stay whole; the block gathered for its forward pass is small
    next to the rest and is left out.
    """
    import dataclasses

    training = {item: (size + processes - 1) // processes if item in SHARDED_ITEMS else size
                for item, size in estimate.training.items()}
    return dataclasses.replace(estimate, training=training)
