"""Parameter counts per component, read from safetensors headers.

A safetensors file starts with an 8-byte little-endian length and a JSON
header naming every tensor's dtype and shape; reading that header is all it
takes to count parameters and bytes, so nothing here reads a weight.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from simpletuner.errors import ModelError

# Bytes per element of the dtypes safetensors writes.
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class ComponentWeights:
    """What one component's weight files hold."""

    name: str
    parameters: int  # elements over all tensors
    stored_bytes: int  # bytes at the dtypes the files hold
    files: tuple[Path, ...]

    def bytes_at(self, bytes_per_parameter: float) -> int:
        return int(self.parameters * bytes_per_parameter)


def read_header(path: Path) -> dict[str, dict]:
    """The tensor entries of one safetensors file (``__metadata__`` left out)."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise ValueError("header length is implausible")
            raw = handle.read(length)
        if len(raw) < length:
            raise ValueError("header is cut short")
        header = json.loads(raw)
    except (OSError, ValueError) as error:  # json errors are ValueErrors
        raise ModelError(f"{path}: not a readable safetensors file ({error})") from None
    header.pop("__metadata__", None)
    return header


def weight_files(folder: Path, variant: Optional[str] = None) -> tuple[Path, ...]:
    """The safetensors files diffusers/transformers would load from ``folder``.

    ``model.safetensors`` and shards ``model-00001-of-00002.safetensors`` are
    the plain weights; ``model.fp16.safetensors`` and ``model.fp16-00001-of-...``
    belong to variant ``fp16``.
    """
    files = sorted(folder.glob("*.safetensors"))
    if variant:
        chosen = [f for f in files if "." in f.stem and f.stem.split(".", 1)[1].startswith(variant)]
        if chosen:
            return tuple(chosen)
    return tuple(f for f in files if "." not in f.stem)


def count_component(name: str, folder: Path, variant: Optional[str] = None) -> Optional[ComponentWeights]:
    """Parameters and bytes of the component in ``folder``; None without safetensors files."""
    files = weight_files(folder, variant)
    if not files:
        return None
    parameters = stored = 0
    for file in files:
        for tensor, entry in read_header(file).items():
            count = 1
            for size in entry["shape"]:
                count *= size
            parameters += count
            stored += count * DTYPE_BYTES.get(entry["dtype"], 4)
    return ComponentWeights(name=name, parameters=parameters, stored_bytes=stored, files=files)
