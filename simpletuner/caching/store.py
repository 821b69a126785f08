"""A folder of tensor entries, one safetensors file per key, written atomically.

Entries are written to a temporary file in the same folder and renamed into
place, so a process killed mid-write leaves either the old entry, the new
entry or nothing, never half a file.  Keys are content hashes (see
``caching/keys.py``), so an entry can never describe stale inputs.

With ``compress=True`` entries are stored zlib-compressed (``.safetensors.z``);
reading accepts both forms whatever the setting, so turning compression on or
off never strands an existing cache.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file

PLAIN = ".safetensors"
COMPRESSED = ".safetensors.z"
# Level 1 keeps writes fast; the padding of T5 embeds compresses well anyway.
COMPRESSION_LEVEL = 1


class TensorStore:
    def __init__(self, root: Path, compress: bool = False) -> None:
        self.root = Path(root)
        self.compress = compress

    def _path(self, key: str, suffix: str) -> Path:
        # Two-character fan-out keeps folders small for large datasets.
        return self.root / key[:2] / f"{key}{suffix}"

    def path_for(self, key: str) -> Path:
        """Where the entry is (either form), or where it would be written."""
        for suffix in (PLAIN, COMPRESSED):
            if self._path(key, suffix).is_file():
                return self._path(key, suffix)
        return self._path(key, COMPRESSED if self.compress else PLAIN)

    def has(self, key: str) -> bool:
        return self._path(key, PLAIN).is_file() or self._path(key, COMPRESSED).is_file()

    def is_intact(self, key: str) -> bool:
        """Present and complete: the header parses and the file is as long as it says.

        Reads only the header of a plain entry, so checking every entry at
        start-up is cheap; a truncated file (a disk filled up, a copy cut
        short) is caught here instead of crashing a training step.
        """
        plain = self._path(key, PLAIN)
        if plain.is_file():
            return _plain_entry_is_complete(plain)
        compressed = self._path(key, COMPRESSED)
        return compressed.is_file() and self.load(key) is not None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        suffix = COMPRESSED if self.compress else PLAIN
        target = self._path(key, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=suffix)
        os.close(handle)
        contiguous = {name: t.contiguous() for name, t in tensors.items()}
        try:
            if self.compress:
                Path(temp_name).write_bytes(zlib.compress(save(contiguous), COMPRESSION_LEVEL))
            else:
                save_file(contiguous, temp_name)
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        # Only one form of an entry exists at a time.
        self._path(key, PLAIN if self.compress else COMPRESSED).unlink(missing_ok=True)

    def load(self, key: str) -> Optional[dict[str, torch.Tensor]]:
        """The entry's tensors, or None when missing or unreadable (e.g. truncated)."""
        try:
            plain = self._path(key, PLAIN)
            if plain.is_file():
                return load_file(plain)
            return load(zlib.decompress(self._path(key, COMPRESSED).read_bytes()))
        except (FileNotFoundError, SafetensorError, OSError, ValueError, zlib.error):
            return None

    def remove(self, key: str) -> None:
        for suffix in (PLAIN, COMPRESSED):
            self._path(key, suffix).unlink(missing_ok=True)


def _plain_entry_is_complete(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            header_length = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_length))
            size = os.fstat(handle.fileno()).st_size
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return False
    data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    return size == 8 + header_length + data_end
