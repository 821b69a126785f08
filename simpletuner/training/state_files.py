"""Training state on disk without pickle: loading a checkpoint never runs code.

The optimizer, learning-rate schedule, EMA and random-generator states are
trees of dicts, lists, tuples, numbers, strings and tensors.  One state is one
safetensors file: its tensors under numbered keys, and the tree (each tensor
replaced by a reference to its key) as JSON in the file's metadata.  Both
halves are plain data, so a file from someone else can at worst hold wrong
numbers.  Values round-trip exactly: tensors bit for bit, floats through
``repr``, tuples and integer dict keys are marked as such.

Tensor subclasses (torchao's quantised optimizer states) are stored through
their ``__tensor_flatten__`` parts and rebuilt only for the classes named in
:data:`TRUSTED_TENSOR_TYPES`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from simpletuner.errors import ConfigError

FORMAT = "simpletuner.state"
VERSION = "1"
_TAG = "__st__"  # marks a JSON object that encodes something JSON has no type for

# "module:Class" of the tensor subclasses a state may hold; nothing else is imported on load.
TRUSTED_TENSOR_TYPES = frozenset({
    "torchao.optim.subclass_8bit:OptimState8bit",
    "torchao.optim.subclass_4bit:OptimState4bit",
    "torchao.optim.subclass_fp8:OptimStateFp8",
})


def write_state(path: Path, tree: Any) -> None:
    """Write ``tree`` to ``path`` (a ``.safetensors`` file)."""
    encoder = _Encoder()
    skeleton = encoder.encode(tree)
    metadata = {"format": FORMAT, "version": VERSION, "tree": json.dumps(skeleton)}
    save_file(encoder.tensors, str(path), metadata=metadata)


def read_state(path: Path) -> Any:
    """The tree :func:`write_state` wrote; ConfigError for anything else."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{path}: not a readable state file ({error}); the checkpoint is damaged") from None
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a SimpleTuner state file; the checkpoint is damaged")
    if metadata.get("version") != VERSION:
        raise ConfigError(
            f"{path}: state format version {metadata.get('version')} is not {VERSION}; "
            "resume it with the SimpleTuner version that wrote it"
        )
    try:
        return _decode(json.loads(metadata["tree"]), tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: the state inside is malformed ({error}); the checkpoint is damaged") from None


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def encode(self, value: Any) -> Any:
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, torch.dtype):
            return {_TAG: "dtype", "name": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {_TAG: "device", "name": str(value)}
        if isinstance(value, torch.Size):
            return {_TAG: "size", "items": list(value)}
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, tuple):
            return {_TAG: "tuple", "items": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and _TAG not in value:
                return {k: self.encode(v) for k, v in value.items()}
            return {_TAG: "dict", "items": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__qualname__} in a checkpoint without pickle")

    def _tensor(self, tensor: torch.Tensor) -> dict[str, Any]:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            return self._subclass(tensor)
        data = tensor.detach().to("cpu").contiguous()
        # safetensors refuses two entries sharing memory; such entries are rare, so copy only then.
        if data.numel() and data.untyped_storage().data_ptr() in self._storages:
            data = data.clone()
        self._storages.add(data.untyped_storage().data_ptr())
        key = f"t{len(self.tensors)}"
        self.tensors[key] = data
        return {_TAG: "tensor", "key": key}

    def _subclass(self, tensor: torch.Tensor) -> dict[str, Any]:
        name = f"{type(tensor).__module__}:{type(tensor).__qualname__}"
        if name not in TRUSTED_TENSOR_TYPES or not hasattr(tensor, "__tensor_flatten__"):
            raise TypeError(f"cannot store a {name} tensor in a checkpoint without pickle")
        inner_names, context = tensor.__tensor_flatten__()
        return {
            _TAG: "subclass", "class": name, "context": self.encode(context),
            "inner": {inner: self._tensor(getattr(tensor, inner)) for inner in inner_names},
            "size": list(tensor.size()), "stride": list(tensor.stride()),
        }


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in value.items()}
    if tag == "tensor":
        return tensors[value["key"]]
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in value["items"])
    if tag == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["items"]}
    if tag == "size":
        return torch.Size(value["items"])
    if tag == "dtype":
        dtype = getattr(torch, value["name"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {value['name']!r}")
        return dtype
    if tag == "device":
        return torch.device(value["name"])
    if tag == "subclass":
        return _rebuild_subclass(value, tensors)
    raise ValueError(f"unknown entry type {tag!r}")


def _rebuild_subclass(value: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    name = value["class"]
    if name not in TRUSTED_TENSOR_TYPES:
        raise ValueError(f"tensor type {name} is not one SimpleTuner loads")
    module_name, class_name = name.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    inner = {k: _decode(v, tensors) for k, v in value["inner"].items()}
    context = _decode(value["context"], tensors)
    return cls.__tensor_unflatten__(inner, context, torch.Size(value["size"]), tuple(value["stride"]))
