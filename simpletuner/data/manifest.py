"""discovery.json: each file's size, mtime and header facts, saved so a re-scan reads only what changed.

The manifest is keyed by relative path; an entry is ``[size, mtime, width,
height]``, ``[size, mtime, reason]`` for a file that cannot be used, with
``"table"`` appended when a parquet table gave the size.  An entry is only
trusted while the file's size and mtime still match it, so a stale entry
costs a header read, never a wrong size.

It grows with the dataset (about 60 bytes an image), so it is stored in two
parts: ``discovery.json``, the base, written whole, and
``discovery.delta.json``, the entries changed, added (an entry) or removed
(``null``) since the base was written.  A re-scan that finds 1% new files
writes only the delta, about 1% of the base; when the delta grows past an
eighth of the base, or the base is small enough that rewriting it costs
nothing, the two are compacted into a new base and the delta is deleted.
Both writes are atomic.  A crash between writing the new base and
deleting the delta leaves a delta whose entries are already in the base or
older than it: applying it again is harmless, since entries validate
themselves by size and mtime (at worst a header is read again).
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Sequence

from simpletuner.storage.base import Storage, read_json, write_json

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "discovery.json"
DELTA_FILE = "discovery.delta.json"
CACHE_VERSION = 2

# Below this many entries the base is rewritten every time (a few hundred kB at most): one file to
# read back for a person, and nothing to gain from a delta.
DELTA_MIN_BASE = 4096
DELTA_MAX_FRACTION = 8  # compact when the delta holds more than base/8 entries


def valid_entry(entry: object) -> bool:
    # Cheap on purpose (it runs per file): we wrote the file; a damaged one fails to parse.
    return type(entry) is list and 3 <= len(entry) <= 5


class Manifest:
    """The saved per-file facts of one dataset, and where they are stored.

    ``entries`` is what the base and the delta say together.
    """

    def __init__(self, storage: Storage, entries: Dict[str, list], base_size: int,
                 delta: Dict[str, Optional[list]]) -> None:
        self.storage = storage
        self.entries = entries
        self.base_size = base_size  # entries in discovery.json itself
        self.delta = delta  # what discovery.delta.json holds: path -> entry, or None for removed

    @classmethod
    def load(cls, storage: Storage) -> "Manifest":
        """The saved facts, or an empty manifest when absent, unreadable or from another version."""
        base = _read(storage, DISCOVERY_FILE)
        if base is None:
            return cls(storage, {}, 0, {})
        entries = base
        # One pass without a call per entry; a damaged entry is rare, and dropped (its file is read again).
        for name in [name for name, entry in entries.items() if type(entry) is not list or not 3 <= len(entry) <= 5]:
            del entries[name]
        base_size = len(entries)
        delta = _read(storage, DELTA_FILE, allow_null=True) or {}
        for name, entry in delta.items():
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        return cls(storage, entries, base_size, delta)

    def save(self, names: Sequence[str], entries: Sequence[Optional[list]]) -> None:
        """Store ``entries[i]`` for ``names[i]`` as the manifest's new content (None: not saved, an empty file).

        Nothing is written when nothing changed.  An entry taken from
        ``self.entries`` unchanged is recognised by identity, so an unchanged
        re-scan of a million files compares no lists.
        """
        old = self.entries
        get = old.get
        changed: Dict[str, Optional[list]] = {}
        kept = 0
        for name, entry in zip(names, entries):
            if entry is None:
                continue
            before = get(name)
            if before is entry or before == entry:
                kept += 1
            else:
                changed[name] = entry
        known = kept + sum(1 for name in changed if name in old)  # saved names still present
        if known != len(old):  # some saved paths are gone: find which (only then is every name hashed again)
            current = {name for name, entry in zip(names, entries) if entry is not None}
            changed.update((name, None) for name in old if name not in current)
        if changed:
            self.apply(changed)

    def apply(self, changed: Mapping[str, Optional[list]]) -> None:
        """Write ``changed`` (path -> new entry, or None: removed) into the delta, or compact."""
        for name, entry in changed.items():
            if entry is None:
                self.entries.pop(name, None)
            else:
                self.entries[name] = entry
        delta = dict(self.delta)
        delta.update(changed)
        if self.base_size < DELTA_MIN_BASE or len(delta) * DELTA_MAX_FRACTION > self.base_size:
            write_json(self.storage, DISCOVERY_FILE, {"version": CACHE_VERSION, "files": self.entries})
            self.base_size, self.delta = len(self.entries), {}
            if self.storage.exists(DELTA_FILE):
                self.storage.delete(DELTA_FILE)
            return
        write_json(self.storage, DELTA_FILE, {"version": CACHE_VERSION, "files": delta})
        self.delta = delta


def _read(storage: Storage, name: str, allow_null: bool = False) -> Optional[Dict[str, Optional[list]]]:
    try:
        data = read_json(storage, name)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("discovery cache %s is unreadable; rescanning the files it described",
                       storage.location(name))
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    if allow_null:
        return {name: entry for name, entry in files.items() if entry is None or valid_entry(entry)}
    return files
