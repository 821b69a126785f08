"""The run's memory, item by item, from parameter counts and the options.

Three moments are estimated; the largest is what the run needs:
- loading: the denoiser read from disk into system RAM at its frozen dtype
  (and quantised there, one block at a time, when --base_model_precision asks);
- caching: text encoders (as stored) and the VAE (fp32) while caches fill;
- training: frozen weights (quantised Linear weights at their own width),
  trained weights, their gradients and optimizer state (fp32), EMA, the
  activations a step keeps for the largest bucket at the batch size, and,
  on a quantised base, the largest quantised layer dequantised while it runs;
  with --train_text_encoder, the trained text encoders as one item
  (``text_encoders``: resident weights, gradients, optimizer state, activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from simpletuner.families.base import ModelFamily, ModelSource
from simpletuner.memory.activations import ActivationEstimate, trace_activations
from simpletuner.memory.params import ComponentWeights, count_component
from simpletuner.memory.precision import dequantised_layer_bytes, optimizer_state_bytes, quantised_weight_bytes
from simpletuner.memory.skeleton import build_skeleton
from simpletuner.memory.text_encoders import TextEncoderEstimate, estimate_trained_encoders
from simpletuner.quantisation.precisions import get_precision

FP32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    components: dict[str, ComponentWeights]
    bucket: tuple[int, int]  # (width, height) in pixels
    batch_size: int
    loading: int  # system RAM while the denoiser loads
    caching: int  # encoders and VAE on the device
    training: dict[str, int] = field(default_factory=dict)  # item -> bytes on the device
    in_ram: dict[str, int] = field(default_factory=dict)  # item -> bytes kept in system RAM meanwhile
    activations: Optional[ActivationEstimate] = None
    gradient_checkpointing: bool = False
    text_encoders: Optional[TextEncoderEstimate] = None  # --train_text_encoder's share of "training"

    @property
    def training_total(self) -> int:
        return sum(self.training.values())

    @property
    def device_peak(self) -> int:
        return max(self.caching, self.training_total)


def estimate_memory(
    config: Any, family: ModelFamily, source: ModelSource, bucket: tuple[int, int],
    frozen_dtype: torch.dtype, quantised_bytes: Optional[float] = None,
) -> Optional[MemoryEstimate]:
    """The estimate for a run; None when the model's files are not on this machine.

    ``quantised_bytes`` is bytes per weight parameter of a quantised Linear
    layer (see ``precision.quantised_weight_bytes``); None keeps weights as loaded.
    """
    components = {}
    for name in family.weight_components():
        folder = source.local_folder(name)
        counted = count_component(name, folder, source.variant) if folder is not None else None
        if counted is not None:
            components[name] = counted
    skeleton = build_skeleton(family, source, config, frozen_dtype)
    if family.denoiser_component not in components or skeleton is None:
        return None
    dtype_bytes = torch.finfo(frozen_dtype).bits // 8
    trained = skeleton.trained_parameters
    other_frozen = skeleton.frozen_parameters - skeleton.linear_weight_parameters
    at_dtype = skeleton.frozen_parameters * dtype_bytes
    frozen = at_dtype if quantised_bytes is None else int(
        skeleton.linear_weight_parameters * quantised_bytes + other_frozen * dtype_bytes)
    training = {"frozen weights": frozen, "trained weights": trained * FP32, "gradients": trained * FP32,
                "optimizer state": int(trained * optimizer_state_bytes(config.optimizer))}
    if quantised_bytes is not None:
        # The backend dequantises one layer at a time in forward/backward (precisions.step_workspace).
        precision = get_precision(config.base_model_precision)
        largest = max(skeleton.largest_quantisable_linear,
                      skeleton.largest_quantisable_conv if precision.quantises_convolutions else 0)
        training["dequantised layer"] = int(largest * dequantised_layer_bytes(precision.name))
    in_ram: dict[str, int] = {}
    if config.use_ema:
        on_cpu = config.ema_cpu_only or config.ema_device == "cpu"
        (in_ram if on_cpu else training)["EMA"] = trained * FP32
    activations = _activations(config, family, source, skeleton.module, bucket, frozen_dtype)
    if activations is not None:
        chosen = activations.with_checkpointing if config.gradient_checkpointing else activations.without_checkpointing
        training["activations"] = chosen
    text_encoders = None
    if getattr(config, "train_text_encoder", False):
        text_encoders = estimate_trained_encoders(config, family, source, config.train_batch_size)
        if text_encoders is not None:
            training["text encoders"] = text_encoders.total
    caching = sum(c.stored_bytes for n, c in components.items() if n not in ("vae", family.denoiser_component))
    if "vae" in components:
        caching += components["vae"].parameters * FP32
    loading = _loading_peak(config, skeleton.module, at_dtype, frozen, quantised_bytes, dtype_bytes) + trained * FP32
    return MemoryEstimate(components, bucket, config.train_batch_size, loading, caching, training, in_ram,
                          activations, bool(config.gradient_checkpointing), text_encoders)


def _loading_peak(config: Any, module: torch.nn.Module, at_dtype: int, frozen: int, quantised_bytes: Optional[float],
                  dtype_bytes: int) -> int:
    """RAM while the denoiser loads.  Unquantised, or nf4-bnb: the weights at the
    frozen dtype.  quanto/torchao load block by block (quantisation/streaming.py):
    the quantised model so far plus one block twice over (its mapped file pages
    and the copy read from them), at most the largest block."""
    from simpletuner.quantisation.streaming import BLOCK_PARAMETERS, blocks_of

    if quantised_bytes is None or get_precision(config.base_model_precision).backend not in ("quanto", "torchao"):
        return max(at_dtype, frozen)
    largest = max(sum(p.numel() for p in (block.parameters() if whole else block.parameters(recurse=False)))
                  for _, block, whole in blocks_of(module, BLOCK_PARAMETERS))
    return frozen + 2 * largest * dtype_bytes


def _activations(config: Any, family: ModelFamily, source: ModelSource, module: torch.nn.Module,
                 bucket: tuple[int, int], dtype: torch.dtype) -> Optional[ActivationEstimate]:
    import json

    vae = source.local_folder("vae")
    if vae is None or not (vae / "config.json").is_file():
        return None
    channels = json.loads((vae / "config.json").read_text()).get("latent_channels", 4)
    width, height = bucket
    factor = family.vae_scale_factor
    try:
        return trace_activations(family, module, config.train_batch_size, (channels, height // factor, width // factor),
                                 dtype, config.gradient_checkpointing_interval or 1)
    except NotImplementedError:  # a family without example_text_batch
        return None
