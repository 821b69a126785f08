"""Keeping the encoder busy: entries written behind it, images read ahead of it.

Creating a file (and, in a fresh cache, its fan-out folder) spends its time
in system calls that release the GIL, so one writer thread does it while the
encoder runs on the next batch.  Images are decoded ahead by reader threads
when the machine has cores to spare (see :func:`loader_threads`).  Order and
results are unchanged: batches reach the encoder in the order given, and
every write is awaited (its error re-raised) before the cache is reported
complete.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

from simpletuner.caching.store import TensorStore

T = TypeVar("T")
R = TypeVar("R")

# Batches read ahead of the one being encoded.
READ_AHEAD = 2
# Writes allowed in flight before the encoder waits for the oldest (bounds memory).
MAX_PENDING_WRITES = 64


def loader_threads() -> int:
    """Threads that read images: none on a machine of two cores or fewer.

    There the encoder's own threads need every core, and reading ahead only
    adds contention (measured with benchmarks/caching.py); with more cores
    up to four readers keep a GPU encoder fed.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores // 2) if cores > 2 else 0


def read_ahead(items: Iterable[T], load: Callable[[T], R], threads: int) -> Iterator[R]:
    """``load(item)`` for each item, in order; with threads, up to READ_AHEAD items early."""
    if threads < 1:
        yield from map(load, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cache-read") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(load, item))
            if len(pending) > READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class WriteBehind:
    """``store.save`` on a background thread; leaving the ``with`` block waits for every write."""

    def __init__(self, store: TensorStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-write")
        self._pending: deque[Future] = deque()

    def save(self, key: str, tensors: dict[str, Any]) -> None:
        self._pending.append(self._pool.submit(self.store.save, key, tensors))
        while len(self._pending) > MAX_PENDING_WRITES or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
