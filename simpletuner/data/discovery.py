"""Finding a dataset's images, their sizes and captions, fast and incrementally.

Sizes come from file headers (:mod:`simpletuner.data.headers`: no pixels are
decoded unless a file looks cut short), or from the dataset's parquet table
with ``metadata_backend: parquet``.  They are saved per dataset in
``<cache_dir_vae>/discovery.json`` keyed by relative path with the file's
size and mtime, so a later run re-reads only files that are new or changed;
that file holds raw facts only (no bucket or crop settings), so changing
resolution or crop never invalidates it; a small change goes to a delta
beside it instead of rewriting it (:mod:`simpletuner.data.manifest`).
``preserve_data_backend_cache`` trusts it completely: the folder is not
even listed.

Records are built straight from the listing's columns, share one
:class:`~simpletuner.data.records.RecordOrigin` and every repeated value
(sides, captions), and no per-file object lives through discovery beside
them: at a million images what is left after discovery is the records
themselves (about 260 bytes an image; documentation/PERFORMANCE.md).

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
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from tqdm import tqdm

from simpletuner.data.bulk import collector_paused
from simpletuner.data.captions import NoCaption, captioner
from simpletuner.data.headers import (  # noqa: F401 - re-exported for callers and tests
    REASON_CORRUPT,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    UnreadableImage,
    read_image_size,
    read_stored_image_size,
)
from simpletuner.data.manifest import CACHE_VERSION, DISCOVERY_FILE, Manifest  # noqa: F401 - re-exported
from simpletuner.data.records import ImageRecord, RecordOrigin
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.tables import MetadataTable
from simpletuner.data.walk import IMAGE_EXTENSIONS, Listing, list_images, list_objects  # noqa: F401
from simpletuner.errors import DataError
from simpletuner.storage.base import Storage, write_json
from simpletuner.storage.datasets import cache_of, cache_prefixes_inside, data_prefix, images_of, latents_of
from simpletuner.storage.local import LocalStorage

logger = logging.getLogger(__name__)

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
    listing: Listing
    cached: Dict[str, list]
    reader: HeaderReader
    table: Optional[MetadataTable]
    images: Optional[Storage] = None  # the bucket of an aws dataset; None: local files
    # One object per distinct value, shared by every record that has it: a million records share a
    # few hundred sides, and often captions ("photo_0001.jpg" ... all say "photo").
    shared: Dict[object, object] = field(default_factory=dict)
    origin: RecordOrigin = field(init=False)
    captioner: Callable[[str, str], str] = field(init=False)

    def __post_init__(self) -> None:
        self.origin = RecordOrigin(self.listing.base, self.images)
        self.captioner = captioner(self.dataset, self.table, self.images)


@dataclass
class _Chunk:
    """What one run of consecutive files gave."""

    records: List[ImageRecord] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (reason, relative path)
    # Each file's manifest entry; None: an empty file; a record: a fresh entry (see _as_entry).
    entries: List[Union[list, ImageRecord, None]] = field(default_factory=list)
    reads: int = 0


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
    manifest = Manifest.load(cache)
    cached = manifest.entries
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
    context = _Context(dataset=dataset, listing=listing, cached=cached, reader=reader, table=table, images=images)
    chunks = _process_all(context, progress, workers, _CHUNK if images is None else _REMOTE_CHUNK)
    files_found = len(listing.names) + sum(len(paths) for paths in listing.skipped.values())
    skipped = {reason: list(paths) for reason, paths in listing.skipped.items()}
    records: List[ImageRecord] = []
    entries: List[Union[list, ImageRecord, None]] = []
    header_reads = 0
    for chunk in chunks:
        records.extend(chunk.records)
        entries.extend(chunk.entries)
        header_reads += chunk.reads
        for reason, relative in chunk.skipped:
            skipped.setdefault(reason, []).append(relative)
    del chunks
    try:
        manifest.save(listing.names, [entry if type(entry) is not ImageRecord else _as_entry(entry)
                                      for entry in entries])
    except OSError as exc:
        raise DataError(
            f"dataset {dataset.id!r}: cannot write {cache.location(DISCOVERY_FILE)} ({exc.strerror or exc}); "
            "make key 'cache_dir_vae' point at a writable folder"
        ) from None
    for paths in skipped.values():
        paths.sort()
    result = DiscoveryResult(
        dataset_id=dataset.id,
        records=records,  # listing order is sorted, and chunks keep it
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
    base = data_prefix(dataset) if dataset.s3 is not None else os.path.join(dataset.instance_data_dir, "")
    listing = Listing(base=base)
    for relative in sorted(cached):
        entry = cached[relative]
        listing.add(relative, entry[0], entry[1])
    return listing


def _path(context: _Context, relative_path: str) -> str:
    if context.images is None and os.sep != "/":
        return context.listing.base + relative_path.replace("/", os.sep)
    return context.listing.base + relative_path


def _default_workers() -> int:
    # Header parsing is Python code holding the GIL; threads pay off only by
    # overlapping the file system calls, which a second thread per core covers.
    return max(1, min(4, os.cpu_count() or 1))


def _process_all(context: _Context, progress: bool, workers: Optional[int], chunk: int = _CHUNK) -> List[_Chunk]:
    """Sizes (from cache, table or header), captions and records for every file, in listing order."""
    total = len(context.listing.names)
    starts = range(0, total, chunk)
    workers = workers or _default_workers()
    chunks: List[_Chunk] = []
    bar = tqdm(total=total, desc=f"discovering {context.dataset.id}", unit="img", disable=not progress, leave=False)
    with bar:
        if workers <= 1 or len(starts) <= 1:
            for start in starts:
                chunks.append(_process_chunk(context, start, min(start + chunk, total)))
                bar.update(len(chunks[-1].entries))
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="discovery") as pool:
                for done in pool.map(lambda start: _process_chunk(context, start, min(start + chunk, total)), starts):
                    chunks.append(done)
                    bar.update(len(done.entries))
    return chunks


def _process_chunk(context: _Context, start: int, stop: int) -> _Chunk:
    dataset, cached, table, listing = context.dataset, context.cached, context.table, context.listing
    from_table = dataset.metadata_backend == "parquet"
    by_name = dataset.caption_strategy == "filename"
    caption_of = context.captioner
    shared = context.shared.setdefault
    origin, images = context.origin, context.images
    done = _Chunk()
    add_entry, add_record, skip = done.entries.append, done.records.append, done.skipped.append
    columns = (listing.names[start:stop], listing.sizes[start:stop], listing.mtimes[start:stop])
    for relative, size, mtime in zip(*columns):
        entry = cached.get(relative)
        if size == 0:
            add_entry(None)
            skip((REASON_EMPTY, relative))
            continue
        fresh = False
        if from_table:
            if not (entry and entry[:3] == [size, mtime, REASON_UNDECODABLE]):
                entry = _table_entry(table, relative, size, mtime)
        elif not (entry and entry[0] == size and entry[1] == mtime and entry[-1] != _FROM_TABLE):
            entry = _read_entry(context.reader, _path(context, relative), size, mtime)  # new, changed, or table-sized
            done.reads += 1
            fresh = True
        if isinstance(entry[2], str):
            add_entry(entry)
            skip((entry[2], relative))
            continue
        width, height = entry[2], entry[3]  # shared below: a manifest's or reader's entry brings its own ints
        try:
            # A file-name caption needs only the name, which the relative path ends with.
            caption = caption_of(relative if by_name else _path(context, relative), relative)
        except NoCaption as missing:
            add_entry(list(entry) if fresh else entry)
            skip((missing.reason, relative))
            continue
        record = ImageRecord.under(origin, relative, shared(width, width), shared(height, height), size, mtime,
                                   shared(caption, caption))
        # A fresh entry is kept as its record, and made a list only when the manifest is saved: lists made
        # now would live through discovery between the records and, freed, leave the heap full of holes.
        add_entry(record if fresh else entry)
        add_record(record)
    return done


def _table_entry(table: Optional[MetadataTable], relative: str, size: int, mtime: int) -> list:
    from simpletuner.data.captions import REASON_NOT_IN_TABLE

    row = table.row_for(relative) if table is not None else None
    if row is None:
        return [size, mtime, REASON_NOT_IN_TABLE, _FROM_TABLE]
    if not row.width or not row.height:
        return [size, mtime, REASON_NO_TABLE_SIZE, _FROM_TABLE]
    return [size, mtime, row.width, row.height, _FROM_TABLE]


def _read_entry(reader: HeaderReader, path: str, size: int, mtime: int) -> Union[list, tuple]:
    """``[size, mtime, reason]`` for an unusable file, else ``(size, mtime, width, height)``: a
    transient tuple the caller turns into a record."""
    try:
        width, height = reader(path)
    except UnreadableImage as bad:
        return [size, mtime, bad.reason]
    return (size, mtime, int(width), int(height))


def _as_entry(entry: Union[list, ImageRecord, None]) -> Optional[list]:
    if type(entry) is ImageRecord:
        return [entry.size_bytes, entry.mtime_ns, entry.width, entry.height]
    return entry  # type: ignore[return-value]


def mark_undecodable(dataset: DatasetConfig, relative_paths: Iterable[str]) -> None:
    """Record in discovery.json that these files failed to decode, so later runs skip them at once.

    The mark is tied to the file's size and mtime: replacing the file clears it.
    """
    manifest = Manifest.load(cache_of(dataset))
    changed: Dict[str, Optional[list]] = {}
    for relative in relative_paths:
        entry = manifest.entries.get(relative)
        if entry is not None:
            changed[relative] = [entry[0], entry[1], REASON_UNDECODABLE]
    if changed:
        manifest.apply(changed)


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON to ``path`` so readers see the old file or the new one, never half of one."""
    folder, name = os.path.split(path)
    write_json(LocalStorage(folder or "."), name, payload)
