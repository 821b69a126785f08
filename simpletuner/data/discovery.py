"""Finding a dataset's images, their sizes and captions, fast and incrementally.

Sizes come from file headers (:mod:`simpletuner.data.headers`: no pixels are
decoded unless a file looks cut short), or from the dataset's parquet table
with ``metadata_backend: parquet``.  They are saved per dataset in
``<cache_dir_vae>/discovery.json`` keyed by relative path with the file's
size and mtime, so a later run re-reads only files that are new or changed;
that file holds raw facts only (no bucket or crop settings), so changing
resolution or crop never invalidates it.  ``preserve_data_backend_cache``
trusts it completely: the folder is not even listed.

An aws dataset is listed from its bucket (one LIST request per 1,000
objects) and its headers are read with ranged GETs of each object's first
bytes (:func:`~simpletuner.data.headers.read_stored_image_size`), many
requests in flight at once; ``discovery.json`` then lives wherever
``cache_dir_vae`` is, in the bucket or in a local folder, so a fresh
machine sharing the cache reads no header again.

Bad files never stop discovery: each is skipped with a reason (empty file,
not an image, truncated or corrupt, too large, no caption...) that
:meth:`DiscoveryResult.summary` lists.  Captions are re-read on every run;
they are cheap, and edits then take effect with nothing to invalidate.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tqdm import tqdm

from simpletuner.data.bulk import collector_paused
from simpletuner.data.captions import NoCaption, caption_for
from simpletuner.data.headers import (  # noqa: F401 - re-exported for callers and tests
    REASON_CORRUPT,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    UnreadableImage,
    read_image_size,
    read_stored_image_size,
)
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.tables import MetadataTable
from simpletuner.data.walk import IMAGE_EXTENSIONS, FoundFile, Listing, list_images, list_objects  # noqa: F401
from simpletuner.errors import DataError
from simpletuner.storage.base import Storage, read_json, write_json
from simpletuner.storage.datasets import cache_of, cache_prefixes_inside, data_prefix, images_of, latents_of
from simpletuner.storage.local import LocalStorage

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "discovery.json"
CACHE_VERSION = 2

REASON_EMPTY = "empty file"
REASON_NO_TABLE_SIZE = "no size in parquet table"
REASON_UNDECODABLE = "cannot be decoded"

_FROM_TABLE = "table"  # marks entries sized by a parquet table: a header read must not trust them
_CHUNK = 256  # files per task: large enough to amortise task overhead, small for a live bar
_REMOTE_CHUNK = 1  # objects per task in a bucket: requests wait on the network; task overhead is nothing beside it

HeaderReader = Callable[[str], Tuple[int, int]]


def shown(name: str) -> str:
    """A file name safe to print: undecodable bytes (surrogate escapes) shown as \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class DiscoveryResult:
    """What discovery found in one dataset, and what it passed over."""

    dataset_id: str
    records: List[ImageRecord]  # usable images, sorted by relative_path
    skipped: Dict[str, List[str]]  # reason -> sorted relative paths
    files_found: int = 0  # image files seen: usable + skipped
    header_reads: int = 0  # headers actually read this run (the rest came from the cache)
    hidden_folders: List[str] = field(default_factory=list)
    folders_skipped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> "folder/" paths
    table_rows_unmatched: int = 0  # parquet rows naming no image in the folder

    def filter_out(self, skipped: Mapping[str, Iterable[str]]) -> None:
        """Move records to ``skipped`` under the given reasons (planning uses this)."""
        gone = set()
        for reason, paths in skipped.items():
            paths = sorted(paths)
            if paths:
                self.skipped.setdefault(reason, []).extend(paths)
                self.skipped[reason].sort()
                gone.update(paths)
        if gone:
            self.records = [r for r in self.records if r.relative_path not in gone]

    @property
    def skipped_count(self) -> int:
        return sum(len(paths) for paths in self.skipped.values())

    def summary(self, examples: int = 3) -> str:
        """Found, usable, and each skip reason with a count and a few file names."""
        head = (f"dataset {self.dataset_id!r}: {self.files_found} image files found, "
                f"{len(self.records)} usable, {self.skipped_count} skipped")
        lines = [head]
        for reason, paths in sorted(self.skipped.items(), key=lambda item: (-len(item[1]), item[0])):
            names = ", ".join(shown(p) for p in paths[:examples])
            more = f", and {len(paths) - examples} more" if len(paths) > examples else ""
            lines.append(f"  {reason}: {len(paths)} ({names}{more})")
        folders = dict(self.folders_skipped)
        if self.hidden_folders:
            folders["hidden folders not scanned"] = self.hidden_folders
        for reason, paths in sorted(folders.items()):
            names = ", ".join(shown(p) for p in paths[:examples])
            more = f", and {len(paths) - examples} more" if len(paths) > examples else ""
            lines.append(f"  {reason}: {len(paths)} ({names}{more})")
        if self.table_rows_unmatched:
            lines.append(f"  parquet rows naming no file in the folder: {self.table_rows_unmatched}")
        return "\n".join(lines)


@dataclass
class _Context:
    dataset: DatasetConfig
    cached: Dict[str, list]
    reader: HeaderReader
    table: Optional[MetadataTable]
    images: Optional[Storage] = None  # the bucket of an aws dataset; None: local files


@dataclass(slots=True)  # one per file: no per-object __dict__
class _Outcome:
    file: FoundFile
    entry: list  # [size, mtime, width, height], [size, mtime, reason], or [..., "table"] from the table
    read: bool = False
    caption: Optional[str] = None
    skip: Optional[str] = None


def discover(
    dataset: DatasetConfig,
    progress: bool = True,
    reader: HeaderReader = read_image_size,
    workers: Optional[int] = None,
) -> DiscoveryResult:
    """Scan ``dataset.instance_data_dir`` (or an aws dataset's bucket) and return its usable images.

    ``reader`` returns (width, height) for a path (an object key for aws
    datasets); it is a parameter so tests can count header reads.
    """
    with collector_paused():
        return _discover(dataset, progress, reader, workers)


def _discover(dataset: DatasetConfig, progress: bool, reader: HeaderReader, workers: Optional[int]) -> DiscoveryResult:
    cache = cache_of(dataset)
    images = images_of(dataset)
    cached = _load_cache(cache)
    table = None
    if dataset.parquet is not None and "parquet" in (dataset.caption_strategy, dataset.metadata_backend):
        table = MetadataTable.load(dataset.parquet, f"dataset {dataset.id!r}")
    if trusts_saved_file_list(dataset) and cached:
        listing = _listing_from_cache(dataset, cached)
    elif images is None:
        excluded = {os.path.normcase(os.path.abspath(str(folder)))  # an s3:// latents location never matches
                    for folder in (dataset.cache_dir_vae, latents_of(dataset).location())}
        listing = list_images(dataset.instance_data_dir, excluded)
    else:
        prefix = data_prefix(dataset)
        listing = list_objects(images.child(prefix).list(), prefix, cache_prefixes_inside(dataset))
    if images is not None:
        reader = partial(read_stored_image_size, images) if reader is read_image_size else reader
        workers = workers or images.workers
    context = _Context(dataset=dataset, cached=cached, reader=reader, table=table, images=images)
    outcomes = _process_all(context, listing.files, progress, workers, _CHUNK if images is None else _REMOTE_CHUNK)
    files_found = len(listing.files) + sum(len(paths) for paths in listing.skipped.values())
    skipped = {reason: list(paths) for reason, paths in listing.skipped.items()}
    records: List[ImageRecord] = []
    header_reads = 0
    sides: Dict[int, int] = {}  # one int object per distinct side: a million records share a few hundred
    for outcome in outcomes:
        header_reads += outcome.read
        if outcome.skip is not None:
            skipped.setdefault(outcome.skip, []).append(outcome.file.relative_path)
        else:
            records.append(_record(outcome, images, sides))
    try:
        _save_cache_if_changed(cache, cached, outcomes)
    except OSError as exc:
        raise DataError(
            f"dataset {dataset.id!r}: cannot write {cache.location(DISCOVERY_FILE)} ({exc.strerror or exc}); "
            "make key 'cache_dir_vae' point at a writable folder"
        ) from None
    for paths in skipped.values():
        paths.sort()
    result = DiscoveryResult(
        dataset_id=dataset.id,
        records=records,  # listing order is sorted, and outcomes keep it
        skipped=skipped,
        files_found=files_found,
        header_reads=header_reads,
        hidden_folders=sorted(listing.hidden_folders),
        folders_skipped={k: sorted(v) for k, v in listing.folders_skipped.items()},
        table_rows_unmatched=len(table.unmatched()) if table is not None else 0,
    )
    logger.debug(result.summary())
    return result


def trusts_saved_file_list(dataset: DatasetConfig) -> bool:
    """Whether the folder is not listed again (``aspect`` and ``metadata`` both come from that listing)."""
    skipped = {"aspect", "metadata"} & set(dataset.skip_file_discovery)
    return dataset.preserve_data_backend_cache or bool(skipped)


def _listing_from_cache(dataset: DatasetConfig, cached: Dict[str, list]) -> Listing:
    if dataset.s3 is not None:
        prefix = data_prefix(dataset)
        files = [FoundFile(rel, prefix + rel, entry[0], entry[1]) for rel, entry in sorted(cached.items())]
        return Listing(files=files)
    root = dataset.instance_data_dir
    files = [FoundFile(rel, os.path.join(root, *rel.split("/")), entry[0], entry[1])
             for rel, entry in sorted(cached.items())]
    return Listing(files=files)


def _record(outcome: _Outcome, images: Optional[Storage], sides: Dict[int, int]) -> ImageRecord:
    file, entry = outcome.file, outcome.entry
    return ImageRecord(
        path=file.path,
        relative_path=file.relative_path,
        width=sides.setdefault(entry[2], entry[2]),
        height=sides.setdefault(entry[3], entry[3]),
        size_bytes=file.size_bytes,
        mtime_ns=file.mtime_ns,
        caption=outcome.caption or "",
        storage=images,
    )


def _default_workers() -> int:
    # Header parsing is Python code holding the GIL; threads pay off only by
    # overlapping the file system calls, which a second thread per core covers.
    return max(1, min(4, os.cpu_count() or 1))


def _process_all(
    context: _Context, files: Sequence[FoundFile], progress: bool, workers: Optional[int], chunk: int = _CHUNK
) -> List[_Outcome]:
    """Sizes (from cache, table or header) and captions for every file."""
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    workers = workers or _default_workers()
    outcomes: List[_Outcome] = []
    bar = tqdm(total=len(files), desc=f"discovering {context.dataset.id}", unit="img",
               disable=not progress, leave=False)
    with bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                outcomes.extend(_process_chunk(context, chunk))
                bar.update(len(chunk))
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discovery") as pool:
                for chunk_outcomes in pool.map(lambda c: _process_chunk(context, c), chunks):
                    outcomes.extend(chunk_outcomes)
                    bar.update(len(chunk_outcomes))
    return outcomes


def _process_chunk(context: _Context, chunk: Sequence[FoundFile]) -> List[_Outcome]:
    dataset, cached, table = context.dataset, context.cached, context.table
    from_table = dataset.metadata_backend == "parquet"
    results = []
    for file in chunk:
        entry = cached.get(file.relative_path)
        read = False
        if file.size_bytes == 0:
            entry = [0, file.mtime_ns, REASON_EMPTY]
        elif from_table:
            if not (entry and entry[:3] == [file.size_bytes, file.mtime_ns, REASON_UNDECODABLE]):
                entry = _table_entry(table, file)
        elif not (entry and entry[0] == file.size_bytes and entry[1] == file.mtime_ns and entry[-1] != _FROM_TABLE):
            entry, read = _read_entry(context.reader, file), True  # new, changed, or sized by a table before
        outcome = _Outcome(file=file, entry=entry, read=read)
        if isinstance(entry[2], str):
            outcome.skip = entry[2]
        else:
            try:
                outcome.caption = caption_for(file.path, dataset, table, file.relative_path, context.images)
            except NoCaption as missing:
                outcome.skip = missing.reason
        results.append(outcome)
    return results


def _table_entry(table: Optional[MetadataTable], file: FoundFile) -> list:
    from simpletuner.data.captions import REASON_NOT_IN_TABLE

    row = table.row_for(file.relative_path) if table is not None else None
    if row is None:
        return [file.size_bytes, file.mtime_ns, REASON_NOT_IN_TABLE, _FROM_TABLE]
    if not row.width or not row.height:
        return [file.size_bytes, file.mtime_ns, REASON_NO_TABLE_SIZE, _FROM_TABLE]
    return [file.size_bytes, file.mtime_ns, row.width, row.height, _FROM_TABLE]


def _read_entry(reader: HeaderReader, file: FoundFile) -> list:
    try:
        width, height = reader(file.path)
    except UnreadableImage as bad:
        return [file.size_bytes, file.mtime_ns, bad.reason]
    return [file.size_bytes, file.mtime_ns, int(width), int(height)]


def _valid_entry(entry: object) -> bool:
    # Cheap on purpose (it runs per file): we wrote the file; a damaged one fails to parse.
    return type(entry) is list and 3 <= len(entry) <= 5


def _load_cache(storage: Storage) -> Dict[str, list]:
    """The saved per-file facts, or {} when absent, unreadable or from another version."""
    try:
        data = read_json(storage, DISCOVERY_FILE)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        logger.warning("discovery cache %s is unreadable; rescanning every file", storage.location(DISCOVERY_FILE))
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {name: entry for name, entry in files.items() if _valid_entry(entry)}


def _save_cache_if_changed(storage: Storage, cached: Dict[str, list], outcomes: List[_Outcome]) -> None:
    # An unchanged re-scan took every entry from ``cached`` itself: checking identity
    # is enough, and spares building and comparing a second copy of a million entries.
    sized = [o for o in outcomes if o.file.size_bytes]
    get = cached.get
    if cached and len(sized) == len(cached) and all(
        o.entry is get(o.file.relative_path) or o.entry == get(o.file.relative_path) for o in sized
    ):
        return
    entries = {o.file.relative_path: o.entry for o in sized}
    write_json(storage, DISCOVERY_FILE, {"version": CACHE_VERSION, "files": entries})


def mark_undecodable(dataset: DatasetConfig, relative_paths: Iterable[str]) -> None:
    """Record in discovery.json that these files failed to decode, so later runs skip them at once.

    The mark is tied to the file's size and mtime: replacing the file clears it.
    """
    storage = cache_of(dataset)
    cached = _load_cache(storage)
    changed = False
    for relative in relative_paths:
        entry = cached.get(relative)
        if entry is not None:
            cached[relative] = [entry[0], entry[1], REASON_UNDECODABLE]
            changed = True
    if changed:
        write_json(storage, DISCOVERY_FILE, {"version": CACHE_VERSION, "files": cached})


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON to ``path`` so readers see the old file or the new one, never half of one."""
    folder, name = os.path.split(path)
    write_json(LocalStorage(folder or "."), name, payload)
