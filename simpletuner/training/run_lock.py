"""One run per output folder: a lock taken before anything is written there.

The lock is ``fcntl.flock`` on ``<output_dir>/.simpletuner.lock``, which the
kernel releases when the holding process ends in any way, SIGKILL included;
so whether a lock is held never depends on guessing from a PID.  The file also
records the holder's PID and host, for the message a second run prints and
for the notice when a run takes over the file a killed run left behind.

Only the launch's main process (``RANK`` 0, or no ``RANK``) takes the lock: the
other processes of the same run share the folder with it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_FILE = ".simpletuner.lock"


@contextmanager
def output_folder_lock(output_dir: Path, env: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """Hold the output folder for the duration of the block (main process only)."""
    if int((os.environ if env is None else env).get("RANK", "0")) != 0:
        yield
        return
    path = output_dir / LOCK_FILE
    # Every folder mkdir(parents=True) is about to create (output/models makes
    # output too when neither exists), innermost first.
    created = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    descriptor = _acquire(path, output_dir)
    try:
        yield
    finally:
        # Unlink while still holding the lock: a run that opens the file now
        # finds it replaced when it checks (see _acquire) and starts over.
        path.unlink(missing_ok=True)
        os.close(descriptor)
        for folder in created:
            _remove_if_empty(folder)  # a run rejected at start-up leaves no folder behind


def _acquire(path: Path, output_dir: Path) -> int:
    output_dir.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            raise ConfigError(
                f"--output_dir={output_dir} is in use by another training run ({_describe(holder)}, lock file "
                f"{path}); wait for it to finish, stop it, or choose another --output_dir"
            ) from None
        if _still_at(path, descriptor):
            break
        os.close(descriptor)  # the previous holder removed the file as we opened it
    previous = _read_holder(descriptor)
    if previous:
        logger.warning("took over the lock on %s left by %s, %s", output_dir, _describe(previous),
                       _why_stale(previous))
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, record.encode("utf-8"), 0)
    return descriptor


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # fails, harmlessly, on a folder with anything in it
    except OSError:
        pass


def _still_at(path: Path, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _read_holder(descriptor: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "a process that left no PID"
    here = holder.get("host") in (None, socket.gethostname())
    return f"PID {holder['pid']}" + ("" if here else f" on host {holder['host']}")


def _why_stale(holder: dict[str, Any]) -> str:
    if holder.get("host") not in (None, socket.gethostname()) or not isinstance(holder.get("pid"), int):
        return "which no longer holds it"
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return "which is no longer running (killed or crashed)"
    except PermissionError:
        pass
    return "which no longer holds it"
