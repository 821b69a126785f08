"""Which cache entries are missing or damaged, from one listing of the store.

Checking entries one by one costs a request each: at a million entries that
is a million sequential round trips to a bucket or a network file system
before the first step.  Instead the store is listed once (one LIST request
per 1,000 objects in a bucket, one directory walk on disk) and the keys the
run needs are compared with what is there:

* a key not listed is missing: no request at all;
* a plain entry's length is fixed by its tensors' shapes, so every intact
  entry of one bucket (``group``) has the same length.  Entries are grouped
  by (group, listed length) and one entry per group has its header checked
  (:meth:`TensorStore.is_intact`); when it is whole, so is every entry of
  that length in that bucket.  A truncated entry has another length and is
  checked on its own, so cut-short writes are still found at start-up;
* compressed entries have no fixed length and are checked one by one, with
  the storage's worker threads keeping several requests in flight.

An entry garbled in place without changing its length passes here; reading
it fails with a message naming it, and ``scan_for_errors`` finds such
entries at start-up.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

from simpletuner.caching.store import PLAIN, TensorStore


@dataclass
class Completeness:
    missing: List[int] = field(default_factory=list)  # indices into the keys: absent or damaged
    damaged: int = 0  # of those, entries present but not whole


def check_entries(
    store: TensorStore, keys: Sequence[str], groups: Optional[Sequence[Hashable]] = None
) -> Completeness:
    """Indices of ``keys`` whose entry must be (re)written; ``groups[i]`` is key i's bucket (same shape)."""
    listed = store.listed()
    result = Completeness()
    classes: Dict[Tuple[Hashable, int], List[int]] = {}
    one_by_one: List[int] = []
    for index, key in enumerate(keys):
        found = listed.get(key)
        if found is None:
            result.missing.append(index)
        elif found[0] == PLAIN:
            group = groups[index] if groups is not None else None
            classes.setdefault((group, found[1]), []).append(index)
        else:
            one_by_one.append(index)
    representatives = [members[0] for members in classes.values()]
    intact = _intact(store, keys, representatives)
    for members, whole in zip(classes.values(), intact):
        if not whole:  # the representative is damaged: the others of its length are checked each
            one_by_one.extend(members)
    for index, whole in zip(one_by_one, _intact(store, keys, one_by_one)):
        if not whole:
            result.missing.append(index)
            result.damaged += 1
    result.missing.sort()
    return result


def _intact(store: TensorStore, keys: Sequence[str], indices: List[int]) -> List[bool]:
    if len(indices) <= 1:
        return [store.is_intact(keys[i]) for i in indices]
    with ThreadPoolExecutor(max_workers=store.storage.workers, thread_name_prefix="cache-check") as pool:
        return list(pool.map(lambda i: store.is_intact(keys[i]), indices))
