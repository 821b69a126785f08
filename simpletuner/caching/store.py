"""Tensor entries, one safetensors object per key, in a folder or an S3 bucket, written atomically.

A local entry is written to a temporary file in the same folder and renamed
into place, so a process killed mid-write leaves either the old entry, the
new entry or nothing, never half a file; an S3 PUT is atomic by itself.  Keys
are content hashes (see ``caching/keys.py``), so an entry can never describe
stale inputs.

With ``compress=True`` entries are stored zlib-compressed (``.safetensors.z``);
reading accepts both forms whatever the setting, so turning compression on or
off never strands an existing cache.

Missing and damaged entries look the same to callers wherever they live:
:meth:`TensorStore.is_intact` is False and :meth:`TensorStore.load` returns
None, so the entry is encoded again.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from simpletuner.storage.base import Storage
from simpletuner.storage.local import LocalStorage

PLAIN = ".safetensors"
COMPRESSED = ".safetensors.z"
# Level 1 keeps writes fast; the padding of T5 embeds compresses well anyway.
COMPRESSION_LEVEL = 1
# A latent's or embed's header is a few hundred bytes: one read of this size holds it.
_HEAD_READ = 4096
_DAMAGE = (SafetensorError, OSError, ValueError, zlib.error, struct.error)


class TensorStore:
    def __init__(self, root: Union[Path, str, Storage], compress: bool = False) -> None:
        self.storage = root if isinstance(root, Storage) else LocalStorage(root)
        self.compress = compress

    @property
    def root(self) -> Union[Path, str]:
        return self.storage.location()

    @staticmethod
    def _name(key: str, suffix: str) -> str:
        # Two-character fan-out keeps folders small for large datasets.
        return f"{key[:2]}/{key}{suffix}"

    def path_for(self, key: str) -> Union[Path, str]:
        """Where the entry is (either form), or where it would be written: a Path, or an s3:// URL."""
        for suffix in (PLAIN, COMPRESSED):
            if self.storage.exists(self._name(key, suffix)):
                return self.storage.location(self._name(key, suffix))
        return self.storage.location(self._name(key, COMPRESSED if self.compress else PLAIN))

    def has(self, key: str) -> bool:
        return self.storage.exists(self._name(key, PLAIN)) or self.storage.exists(self._name(key, COMPRESSED))

    def listed(self) -> dict[str, tuple[str, int]]:
        """Every entry in the store, from one listing: key -> (suffix, length in bytes)."""
        entries: dict[str, tuple[str, int]] = {}
        for stored in self.storage.list():
            name = stored.name.rsplit("/", 1)[-1]
            for suffix in (COMPRESSED, PLAIN):  # the longer suffix first: ".safetensors.z" ends neither way else
                if name.endswith(suffix):
                    entries[name[: -len(suffix)]] = (suffix, stored.size)
                    break
        return entries

    def is_intact(self, key: str) -> bool:
        """Present and complete: the header parses and the entry is as long as it says.

        Reads only the head of a plain entry (one request in a bucket), so
        checking every entry at start-up is cheap; a truncated or garbled
        entry (a disk filled up, a copy cut short, an object overwritten by
        something else) is caught here instead of crashing a training step.
        """
        try:
            head, size = self.storage.read_head(self._name(key, PLAIN), _HEAD_READ)
        except FileNotFoundError:
            return self.storage.exists(self._name(key, COMPRESSED)) and self.load(key) is not None
        except OSError:
            return False
        return _plain_entry_is_complete(self.storage, self._name(key, PLAIN), head, size)

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        contiguous = {name: t.contiguous() for name, t in tensors.items()}
        data = save(contiguous)
        if self.compress:
            data = zlib.compress(data, COMPRESSION_LEVEL)
        self.storage.write(self._name(key, COMPRESSED if self.compress else PLAIN), data)
        # Only one form of an entry exists at a time.
        self.storage.delete(self._name(key, PLAIN if self.compress else COMPRESSED))

    def load(self, key: str) -> Optional[dict[str, torch.Tensor]]:
        """The entry's tensors, or None when missing or unreadable (e.g. truncated)."""
        try:
            try:
                return load(self.storage.read(self._name(key, PLAIN)))
            except FileNotFoundError:
                return load(zlib.decompress(self.storage.read(self._name(key, COMPRESSED))))
        except _DAMAGE:
            return None

    def remove(self, key: str) -> None:
        for suffix in (PLAIN, COMPRESSED):
            self.storage.delete(self._name(key, suffix))


def _plain_entry_is_complete(storage: Storage, name: str, head: bytes, size: int) -> bool:
    try:
        header_length = struct.unpack("<Q", head[:8])[0]
        if header_length > size:
            return False
        raw = head[8 : 8 + header_length]
        if len(raw) < header_length:
            raw += storage.read_range(name, len(head), 8 + header_length)
        header = json.loads(raw)
        data_end = max((entry["data_offsets"][1] for entry_name, entry in header.items()
                        if entry_name != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
        return False
    return size == 8 + header_length + data_end
