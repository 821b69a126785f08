"""The trained text encoders (--train_text_encoder), estimated on the meta device.

When the encoders train (``training/trained_text_encoders.py``) they stay on
the device for the whole run, at the dtype transformers loads them at (the
config's ``dtype``, else the files'), and every step encodes the batch's
captions with gradients.  So the step holds, on top of the denoiser's items:
- every encoder weight (frozen or not);
- the trained ones the encoding reaches again as gradients, and their
  optimizer state: a LoRA on the attention projections (kept in fp32), or
  with ``--model_type full`` the encoders' own weights at their loaded
  dtype, less the layers ``--freeze_encoder`` keeps frozen;
- the activations the encoding keeps for backward, which are held through
  the denoiser's forward and backward (the encoders' backward runs last).

Each encoder is built on the meta device from its ``config.json`` with the
run's adapter, and the family's own ``trainable_text_embeds`` runs on meta
tensors, so what the estimate traces is the graph the step keeps: layers
whose output the embeds do not use (SDXL's first encoder stops at the
penultimate layer) are freed with their saved tensors and not counted.

``--text_encoder_limit`` (at least 1%) decides for how long, not how much:
the peak is in the first steps.  ``--save_text_encoder`` only changes what is saved.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch

from simpletuner.families.base import ModelFamily, ModelSource, TextEncoders
from simpletuner.memory.activations import _FusedAttention
from simpletuner.memory.params import read_header, weight_files
from simpletuner.memory.precision import optimizer_state_bytes

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


@dataclass(frozen=True)
class TextEncoderEstimate:
    weights: int  # every encoder weight as loaded, adapter included
    trained_parameters: int  # those that get gradients
    gradients: int
    optimizer_state: int
    activations: int  # kept for backward by one step's encoding
    batch_size: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations


class _LiveSaved:
    """The storages autograd saves tensors of, counted once each and in full (as
    ``activations._SavedBytes`` counts them), for those still held when asked;
    parameters and views of them are weights, left out."""

    def __init__(self, parameter_ids: set[int]) -> None:
        self.parameter_ids = parameter_ids
        self.saved: dict[int, list[weakref.ref]] = {}
        self.sizes: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in self.parameter_ids and id(base) not in self.parameter_ids:
            storage = tensor.untyped_storage()
            self.saved.setdefault(storage._cdata, []).append(weakref.ref(tensor))
            self.sizes[storage._cdata] = storage.nbytes()
        return tensor

    def live_bytes(self) -> int:
        # A storage whose tensors all died was freed (and its key may have been reused: then a
        # live tensor is there, of the storage now at that key, whose size was recorded last).
        return sum(self.sizes[key] for key, refs in self.saved.items() if any(ref() is not None for ref in refs))


def _loaded_dtype(config: Any, folder: Any, variant: Optional[str]) -> torch.dtype:
    """What ``from_pretrained`` picks by default (dtype "auto"): the config's dtype, else the files'."""
    if getattr(config, "dtype", None) is not None:
        dtype = config.dtype
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for file in weight_files(folder, variant):
        for entry in read_header(file).values():
            if entry["dtype"] in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[entry["dtype"]]
    return torch.get_default_dtype()


def _meta_encoder(folder: Any, variant: Optional[str]) -> torch.nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    model_class = getattr(transformers, config.architectures[0])
    dtype = _loaded_dtype(config, folder, variant)
    with torch.device("meta"):
        encoder = model_class._from_config(config, dtype=dtype)
    return encoder


def build_trained_encoders(config: Any, family: ModelFamily, source: ModelSource) -> Optional[TextEncoders]:
    """The family's text encoders on the meta device, prepared as the run trains them
    (with their tokenizers); None when a config or tokenizer is not on this machine."""
    import transformers

    from simpletuner.logs import quieted
    from simpletuner.training import adapters
    from simpletuner.training.encoder_layers import freeze_encoder_layers

    names = [c for c in family.text_components if not c.startswith("tokenizer")]
    tokenizer_names = [c for c in family.text_components if c.startswith("tokenizer")]
    folders = [source.local_folder(name) for name in names + tokenizer_names]
    if any(folder is None for folder in folders):
        return None
    if not all((folder / "config.json").is_file() for folder in folders[:len(names)]):
        return None
    encoders = []
    for folder in folders[:len(names)]:
        encoder = _meta_encoder(folder, source.variant)
        encoder.requires_grad_(False)
        with torch.device("meta"), quieted("simpletuner.training"):
            if config.model_type == "full":
                encoder.requires_grad_(True)
            else:
                adapters.add_lora(encoder, config, family.text_encoder_lora_targets)
        freeze_encoder_layers(encoder, config)
        encoder.train()
        encoders.append(encoder)
    tokenizers = [transformers.AutoTokenizer.from_pretrained(str(folder)) for folder in folders[len(names):]]
    return TextEncoders(tokenizers=tokenizers, encoders=encoders)


def trace_encoding(family: ModelFamily, text: TextEncoders, batch_size: int) -> tuple[int, set[int]]:
    """Bytes the batch's encoding keeps for backward (the embeds are what the step holds on to),
    and the ids of the parameters its backward reaches: only those get gradients and optimizer
    state (the layers after SDXL's penultimate hidden state never do)."""
    live = _LiveSaved({id(p) for encoder in text.encoders for p in encoder.parameters()})
    prompts = ["a caption"] * batch_size  # CLIP pads to its full length: any caption has the same shapes
    with _FusedAttention(), torch.autograd.graph.saved_tensors_hooks(live.pack, lambda t: t):
        embeds = family.trainable_text_embeds(text, prompts)
    held = live.live_bytes()
    return held, _reached_parameters([t.grad_fn for t in embeds.values() if t.grad_fn is not None])


def _reached_parameters(roots: list[Any]) -> set[int]:
    """Ids of the leaf tensors a backward from ``roots`` accumulates gradients into."""
    reached: set[int] = set()
    seen: set[int] = set()
    pending = list(roots)
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):  # AccumulateGrad
            reached.add(id(node.variable))
        pending.extend(next_node for next_node, _ in node.next_functions)
    return reached


def estimate_trained_encoders(config: Any, family: ModelFamily, source: ModelSource,
                              batch_size: int) -> Optional[TextEncoderEstimate]:
    """The trained encoders' share of the step; None when their files are not on this machine."""
    text = build_trained_encoders(config, family, source)
    if text is None:
        return None
    parameters = [p for encoder in text.encoders for p in encoder.parameters()]
    weights = sum(p.numel() * p.element_size() for p in parameters)
    trained = [p for p in parameters if p.requires_grad]
    activations, reached = trace_encoding(family, text, batch_size)
    # Optimizers keep state only for parameters that got a gradient.
    updated = [p for p in trained if id(p) in reached]
    gradients = sum(p.numel() * p.element_size() for p in updated)
    # Full-width states take the parameter's dtype (a full fine-tune of fp16/bf16 encoders).
    state = sum(p.numel() * optimizer_state_bytes(config.optimizer, p.element_size()) for p in updated)
    return TextEncoderEstimate(weights, sum(p.numel() for p in trained), gradients, int(state), activations,
                               batch_size)
