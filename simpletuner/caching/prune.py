"""Finding cache entries that nothing refers to any more.

Cache keys hash everything that shaped an entry (see ``caching/keys.py``),
so an entry made under other settings, for an image since edited or
removed, or for a caption since changed is never used again, but it stays
on disk.  :func:`orphaned_entries` compares a store's files with the keys
the current plan uses and returns the ones nothing uses.

Only files this cache wrote are ever candidates: names of the form
``ab/ab<38 more hex digits>.safetensors`` (or ``.safetensors.z``), which
``TensorStore`` writes and nothing else does.  Anything else in the folder
(``discovery.json``, a user's notes, a half-written ``.tmp-`` file of a
running write) is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from simpletuner.caching.store import TensorStore

_ENTRY = re.compile(r"^([0-9a-f]{2})/(\1[0-9a-f]{38})\.safetensors(?:\.z)?$")


@dataclass
class Orphans:
    """A store's entries: how many are in use, and the files of those that are not."""

    store: TensorStore
    in_use: int = 0
    names: list[str] = field(default_factory=list)  # relative to the store's root
    size: int = 0  # bytes

    def remove(self) -> None:
        for name in self.names:
            self.store.storage.delete(name)


def orphaned_entries(store: TensorStore, used_keys: Iterable[str]) -> Orphans:
    """The entry files in ``store`` whose key is not in ``used_keys``."""
    used = set(used_keys)
    result = Orphans(store)
    for stored in store.storage.list():
        match = _ENTRY.match(stored.name)
        if match is None:
            continue
        if match.group(2) in used:
            result.in_use += 1
        else:
            result.names.append(stored.name)
            result.size += stored.size
    result.names.sort()
    return result
