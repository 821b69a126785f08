"""A folder of tensor entries, one safetensors file per key, written atomically.

Entries are written to a temporary file in the same folder and renamed into
place, so a process killed mid-write leaves either the old entry, the new
entry or nothing, never half a file.  Keys are content hashes (see
``caching/keys.py``), so an entry can never describe stale inputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class TensorStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        # Two-character fan-out keeps folders small for large datasets.
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        target = self.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(handle)
        try:
            save_file({name: t.contiguous() for name, t in tensors.items()}, temp_name)
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def load(self, key: str) -> Optional[dict[str, torch.Tensor]]:
        """The entry's tensors, or None when missing or unreadable (e.g. truncated)."""
        try:
            return load_file(self.path_for(key))
        except (FileNotFoundError, SafetensorError, OSError, ValueError):
            return None

    def remove(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)
