"""--fsdp_cpu_ram_efficient_loading: only the main process reads the base weights.

Without it every process loads the whole denoiser from disk (N copies in CPU
memory at once on one machine) before ``fully_shard`` keeps a part of each
weight.  With it the other processes build the denoiser from its config on
the meta device (no weight file is opened, no memory is taken), the adapter
is added the same way on every process, the model is sharded, and the main
process's whole weights are broadcast into every process's shards with
``set_model_state_dict(..., StateDictOptions(full_state_dict=True,
broadcast_from_rank0=True))``, the torch.distributed.checkpoint function made
for this.

Buffers: accelerate's ``init_empty_weights`` leaves buffers real, so a
non-persistent buffer (a positional-embedding table, not in the state dict,
so never sent) holds the value its constructor computed, as it does after
``from_pretrained``; persistent buffers are in the state dict and sent.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)


def efficient_loading(config: Any, num_processes: int) -> bool:
    """Whether the non-main processes build the denoiser empty and receive its weights."""
    from simpletuner.distributed.fsdp import sharding_active

    return sharding_active(config, num_processes) and bool(getattr(config, "fsdp_cpu_ram_efficient_loading", False))


def load_denoiser(family: Any, source: Any, config: Any, device: Any, dtype: torch.dtype, is_main: bool,
                  num_processes: int) -> torch.nn.Module:
    """The frozen denoiser as step 5 of the run loads it: placed on ``device``; with
    --fsdp_cpu_ram_efficient_loading in CPU memory on the main process and empty on the others."""
    if efficient_loading(config, num_processes):
        if not is_main:
            return empty_denoiser(family, source, dtype)
        # The main process keeps the whole model in CPU memory: fully_shard moves each
        # group's weights to the device as it shards them, so the device never holds it all.
        device = torch.device("cpu")
    from simpletuner.quantisation.streaming import load_placed_denoiser

    return load_placed_denoiser(family, source, config.base_model_precision, device, dtype, config.quantize_via)


def empty_denoiser(family: Any, source: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The family's denoiser built from its config alone: parameters on the meta device, buffers real.

    Reads only the component's config (the folder's config.json, the Hub's,
    or for a single-file checkpoint the config source's), never its weights.
    """
    import diffusers
    from accelerate import init_empty_weights

    from simpletuner.errors import ModelError

    model_class = getattr(diffusers, family.denoiser_class_name)
    component = family.denoiser_component
    # The same place ModelSource.load reads from; a single file takes its config from ``base``.
    path, subfolder = source.overrides.get(component, (source.base, component))
    try:
        model_config = model_class.load_config(path, subfolder=subfolder, revision=source.revision)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot read the {component} config from {path}: {first_line}") from None
    with init_empty_weights(include_buffers=False):
        denoiser = model_class.from_config(model_config)
    # Casting meta parameters is free; the buffers are cast as place() casts a loaded model's.
    denoiser.to(dtype=dtype).requires_grad_(False)
    family.denoiser_loaded(denoiser)
    logger.info("--fsdp_cpu_ram_efficient_loading: %s built empty; its weights come from the main process",
                model_class.__name__)
    return denoiser


def state_to_send(denoiser: torch.nn.Module, config: Any) -> Optional[dict[str, torch.Tensor]]:
    """The main process's whole state dict, taken before sharding (None elsewhere or without the option).

    The dict holds references, not copies: the loaded tensors stay alive until
    they are sent, the same peak as loading and then sharding.
    """
    import torch.distributed as dist

    if not efficient_loading(config, dist.get_world_size()) or dist.get_rank() != 0:
        return None
    return denoiser.state_dict()


def receive_weights(denoiser: torch.nn.Module, full_state: Optional[dict[str, torch.Tensor]], config: Any,
                    device: torch.device) -> None:
    """Fill every process's shards (and persistent buffers) from the main process's ``full_state``.

    Collective: every process calls it once the denoiser is sharded.  An empty
    denoiser first gets memory (``to_empty``, which FSDP2 follows by resetting
    its sharded parameters); its real buffers are kept, since ``to_empty``
    would leave them uninitialised.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not efficient_loading(config, dist.get_world_size()):
        return
    if any(p.is_meta for p in denoiser.parameters()):
        # Shards live in CPU memory under --fsdp_cpu_offload, on the device otherwise.
        target = torch.device("cpu") if config.fsdp_cpu_offload else device
        buffers = {name: buffer.to(target) for name, buffer in denoiser.named_buffers() if not buffer.is_meta}
        denoiser.to_empty(device=target)
        for name, buffer in buffers.items():
            owner, _, leaf = name.rpartition(".")
            denoiser.get_submodule(owner)._buffers[leaf] = buffer
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(denoiser, full_state if full_state is not None else {}, options=options)
    logger.info("--fsdp_cpu_ram_efficient_loading: the main process's weights sent into every process's shards")
