"""A model folder whose weights cannot load: for checks that must work from file headers alone."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path


def header_only_copy(model: Path, into: Path) -> Path:
    """The model with every safetensors file cut after its header: counting works, loading cannot."""
    shutil.copytree(model, into)
    for file in into.rglob("*.safetensors"):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
        with open(file, "r+b") as handle:
            handle.truncate(8 + length)
    return into
