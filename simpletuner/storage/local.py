"""A folder on the local file system as a :class:`~simpletuner.storage.base.Storage`.

Writes go to a temporary file in the target folder that is then renamed into
place, so a process killed mid-write leaves the old object, the new one or
nothing, never half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Tuple, Union

from simpletuner.storage.base import Storage, StoredObject

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)


class LocalStorage(Storage):
    def __init__(self, root: Union[str, "os.PathLike[str]"]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _full(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/")) if name else str(self.root)

    def location(self, name: str = "") -> Path:
        return Path(self._full(name))

    def read(self, name: str) -> bytes:
        with open(self._full(name), "rb") as handle:
            return handle.read()

    def read_head(self, name: str, count: int) -> Tuple[bytes, int]:
        fd = os.open(self._full(name), _OPEN_FLAGS)
        try:
            return os.read(fd, count), os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        fd = os.open(self._full(name), _OPEN_FLAGS)
        try:
            return os.pread(fd, max(0, stop - start), start) if hasattr(os, "pread") else _seek_read(fd, start, stop)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, durable: bool = False) -> None:
        target = self._full(name)
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                if durable:
                    stream.flush()
                    os.fsync(stream.fileno())
            os.replace(temp_name, target)
        except BaseException:
            try:
                os.unlink(temp_name)
            except OSError:
                pass
            raise

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._full(name))

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._full(name))
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        for folder, _dirs, files in os.walk(self.root):
            relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
            base = "" if relative == "." else relative + "/"
            for file_name in files:
                name = base + file_name
                if name.startswith(prefix):
                    try:
                        stat = os.stat(os.path.join(folder, file_name))
                    except OSError:
                        continue
                    yield StoredObject(name, stat.st_size, stat.st_mtime_ns)

    def child(self, name: str) -> "LocalStorage":
        return LocalStorage(self._full(name.strip("/")))


def _seek_read(fd: int, start: int, stop: int) -> bytes:
    os.lseek(fd, start, os.SEEK_SET)
    return os.read(fd, max(0, stop - start))


def move_into_place(complete: Path, final: Path, aside: Path) -> None:
    """Rename the finished folder ``complete`` to ``final``; an existing ``final`` is moved to
    ``aside`` first and removed only once the new one is in place, so a folder under its
    final name is always whole."""
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(complete, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(complete, final)
