"""The storage interface: where a dataset's images or a cache's entries live.

Names are "/"-separated and relative to the storage's root (a local folder,
or a bucket and key prefix).  Reads of a name that does not exist raise
``FileNotFoundError`` whatever the backend, so callers treat a missing S3
object exactly like a missing file.  Anything the user has to fix
(credentials, an unreachable endpoint, a bucket that does not exist) raises
:class:`StorageError`, a :class:`~simpletuner.errors.DataError` with one line
naming the dataset and the key.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Tuple, Union

from simpletuner.errors import DataError


class StorageError(DataError):
    """A storage request failed for a reason the user must fix; the message names dataset and key."""


@dataclass(frozen=True)
class StoredObject:
    """One listed object: its name under the listing root, size, and modification time."""

    name: str
    size: int
    mtime_ns: int


class Storage(ABC):
    """A flat namespace of byte objects; writes are atomic (readers see old or new, never half)."""

    # How many requests are worth having in flight at once (threads per listing).
    workers: int = 4

    @abstractmethod
    def location(self, name: str = "") -> Union[str, "os.PathLike[str]"]:
        """Where ``name`` is, for messages: a local Path, or an ``s3://`` URL."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def read_head(self, name: str, count: int) -> Tuple[bytes, int]:
        """Up to ``count`` leading bytes and the object's total size (one request)."""

    @abstractmethod
    def read_range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (exclusive), fewer at the end of the object."""

    @abstractmethod
    def write(self, name: str, data: bytes, durable: bool = False) -> None:
        """Store ``data`` under ``name`` atomically; ``durable`` also syncs it to disk where that applies."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; a missing one is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose name starts with ``prefix`` (names relative to this storage's root)."""

    @abstractmethod
    def child(self, name: str) -> "Storage":
        """A storage rooted at the sub-folder (or key prefix) ``name``."""


def read_json(storage: Storage, name: str) -> Any:
    """The JSON document ``name``; FileNotFoundError when absent, ValueError when it does not parse."""
    return json.loads(storage.read(name))


def write_json(storage: Storage, name: str, payload: Any) -> None:
    """Store ``payload`` as compact JSON, atomically and (on disk) durably."""
    text = json.dumps(payload, separators=(",", ":"))  # one C-encoder call, unlike json.dump
    storage.write(name, text.encode("utf-8"), durable=True)
