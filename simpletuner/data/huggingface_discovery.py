"""Discovery for ``type: huggingface`` datasets: each row's size, version and caption.

A row's size comes from ``width_column``/``height_column`` when both are set,
otherwise from its image bytes' header (:mod:`simpletuner.data.headers`, the
same parser as for files; pixels are decoded only where a header looks cut
short).

A row's version stands where a file's size and mtime stand in
:class:`~simpletuner.data.records.ImageRecord`, so latent cache keys
(:func:`~simpletuner.caching.keys.latent_key`: row name, size, version,
geometry) change for the rows whose image changed and no others:

- without size columns every image's bytes are read for their header anyway,
  so the version is a 64-bit xxHash of them (any change is noticed);
- with size columns no image byte is read at all: the byte count comes from
  the Arrow column's offsets (an image stored as a file path: the file's size
  and mtime).  Buckets and the step count are then known without a pass over
  the images, which is what a streaming start needs; the price is that an
  image replaced by one of exactly the same byte count keeps its old latent.

The facts are saved in ``<cache_dir_vae>/huggingface_rows.json`` with the
dataset's fingerprint, split and revision: while those are unchanged a run
reads nothing but that file (and the caption columns).  After a change the
rows are looked at again, and headers are read only for rows whose bytes
changed.

Captions are read from their columns on every run (only those columns are
read), so a fixed caption takes effect with nothing to invalidate.  Rows
without an image, with bytes that are no image, or without a caption (or,
with size columns, a size) are skipped and counted in the summary like bad
files.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import xxhash
from tqdm import tqdm

from simpletuner.data.captions import REASON_NO_CAPTION, NoCaption, finish_caption
from simpletuner.data.discovery import REASON_UNDECODABLE, DiscoveryResult
from simpletuner.data.headers import UnreadableImage, read_stored_image_size
from simpletuner.data.huggingface_source import (
    HuggingFaceRows,
    HuggingFaceSource,
    column_value,
    image_bytes,
    load_rows,
    row_index,
    row_name,
)
from simpletuner.data.records import ImageRecord, RecordOrigin
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.tables import caption_cell
from simpletuner.errors import DataError
from simpletuner.storage.base import Storage, read_json, write_json
from simpletuner.storage.datasets import cache_of

logger = logging.getLogger(__name__)

ROWS_FILE = "huggingface_rows.json"
ROWS_VERSION = 1
REASON_NO_IMAGE = "no image in row"
REASON_NO_SIZE = "no size in width/height columns"
_BATCH = 1000  # rows per Arrow batch: large enough to amortise, small enough for a live bar

HeaderReader = Callable[[bytes], Tuple[int, int]]


class _InMemory:
    """One image's bytes with the read calls the header parser makes of a storage."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, name: str) -> bytes:
        return self.data

    def read_head(self, name: str, count: int) -> Tuple[bytes, int]:
        return self.data[:count], len(self.data)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        return self.data[start:stop]


def read_bytes_size(data: bytes) -> Tuple[int, int]:
    """(width, height) of an encoded image held in memory; UnreadableImage when it is none."""
    return read_stored_image_size(_InMemory(data), "")  # type: ignore[arg-type] - duck-typed storage


def discover_huggingface(
    dataset: DatasetConfig, progress: bool = True, reader: HeaderReader = read_bytes_size
) -> DiscoveryResult:
    """Every usable row of the dataset's split; ``reader`` is a parameter so tests can count header reads."""
    source: HuggingFaceSource = dataset.huggingface
    rows = load_rows(source, dataset.id)
    storage = HuggingFaceRows(source, dataset.id).attach(rows)
    cache = cache_of(dataset)
    identity = _identity(source, rows)
    saved = _load(cache)
    if saved.get("identity") == identity:
        entries, header_reads = saved["rows"], 0
    else:
        entries, header_reads = _scan(rows, source, saved.get("rows") or [], reader, dataset.id, progress)
        _save(cache, dataset, identity, entries)
    captions = _captions(rows, source, dataset)
    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    origin = RecordOrigin("", storage)  # a row's path is its name, read from the rows' storage
    for index, (entry, caption) in enumerate(zip(entries, captions)):
        name = row_name(index)
        reason = entry[2] if isinstance(entry[2], str) else (caption if isinstance(caption, NoCaption) else None)
        if reason is not None:
            skipped.setdefault(getattr(reason, "reason", reason), []).append(name)
            continue
        records.append(ImageRecord.under(origin, name, entry[2], entry[3], entry[0], entry[1], caption))
    result = DiscoveryResult(dataset_id=dataset.id, records=records, skipped=skipped, files_found=len(entries),
                             header_reads=header_reads)
    logger.debug(result.summary())
    return result


def _identity(source: HuggingFaceSource, rows: Any) -> Dict[str, Any]:
    """What must be unchanged for the saved row facts to hold without looking at a row."""
    return {"dataset": source.dataset_name, "split": source.split, "revision": source.revision,
            "fingerprint": getattr(rows, "_fingerprint", None), "rows": len(rows),
            "image": source.image_column, "sizes": [source.width_column, source.height_column]}


def _batches(rows: Any, columns: Sequence[str]) -> Any:
    """Arrow batches of just ``columns`` (images stay encoded bytes: nothing is decoded)."""
    return rows.select_columns(list(dict.fromkeys(columns))).with_format("arrow").iter(batch_size=_BATCH)


def _scan(rows: Any, source: HuggingFaceSource, previous: List[list], reader: HeaderReader, dataset_id: str,
          progress: bool) -> Tuple[List[list], int]:
    """[size, version, width, height] or [size, version, reason] per row, and how many headers were read."""
    bar = tqdm(total=len(rows), desc=f"discovering {dataset_id}", unit="row", disable=not progress, leave=False)
    with bar:
        if source.sizes_from_columns:
            return _scan_columns(rows, source, bar), 0
        return _scan_headers(rows, source, previous, reader, bar)


def _scan_headers(rows: Any, source: HuggingFaceSource, previous: List[list], reader: HeaderReader,
                  bar: Any) -> Tuple[List[list], int]:
    """Each row's bytes hashed (its version) and, where they changed since last time, its header read."""
    entries: List[list] = []
    reads = 0
    for batch in _batches(rows, [source.image_column]):
        images = batch.column(source.image_column).to_pylist()
        for cell in images:
            index = len(entries)
            data = image_bytes(cell)
            if not data:
                entries.append([0, 0, REASON_NO_IMAGE])
                continue
            size, version = len(data), xxhash.xxh3_64_intdigest(data)
            old = previous[index] if index < len(previous) else None
            if old and old[:2] == [size, version]:
                entries.append(old)  # same bytes as last time: its size (or its fault) still holds
                continue
            reads += 1
            try:
                width, height = reader(data)
                entries.append([size, version, int(width), int(height)])
            except UnreadableImage as bad:
                entries.append([size, version, bad.reason])
        bar.update(len(images))
    return entries, reads


def _scan_columns(rows: Any, source: HuggingFaceSource, bar: Any) -> List[list]:
    """Sizes from the size columns and versions from the Arrow offsets: no image byte is read.

    An image stored as bytes is versioned by its byte length alone (read
    from the column's offsets, never from its data); one stored as a file
    path by the file's size and mtime.  That is what lets training start
    without a pass over every image.
    """
    import pyarrow.compute as pc

    entries: List[list] = []
    for batch in _batches(rows, [source.image_column, source.width_column, source.height_column]):
        widths = batch.column(source.width_column).to_pylist()
        heights = batch.column(source.height_column).to_pylist()
        versions: List[Tuple[int, int]] = []
        for chunk in batch.column(source.image_column).chunks:
            versions.extend(_offset_versions(chunk, pc))
        for (size, version), width, height in zip(versions, widths, heights):
            entries.append(_column_entry(size, version, width, height) if size else [0, 0, REASON_NO_IMAGE])
        bar.update(batch.num_rows)
    return entries


def _offset_versions(chunk: Any, pc: Any) -> List[Tuple[int, int]]:
    """(byte count, version) per cell of one Arrow chunk of the image column, from offsets and paths only."""
    import pyarrow as pa

    if not pa.types.is_struct(chunk.type):  # a plain binary column
        return [(n or 0, 0) for n in pc.binary_length(chunk).to_pylist()]
    lengths = pc.binary_length(pc.struct_field(chunk, "bytes")).to_pylist()
    has_path = chunk.type.get_field_index("path") >= 0
    paths = pc.struct_field(chunk, "path").to_pylist() if has_path else [None] * len(chunk)
    versions = []
    for length, path in zip(lengths, paths):
        if length:
            versions.append((length, 0))
        elif path and os.path.isfile(path):
            stat = os.stat(path)
            versions.append((stat.st_size, stat.st_mtime_ns))
        else:
            versions.append((0, 0))
    return versions


def _column_entry(size: int, version: int, width: Any, height: Any) -> list:
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        return [size, version, REASON_NO_SIZE]
    return [size, version, width, height] if width > 0 and height > 0 else [size, version, REASON_NO_SIZE]


def _captions(rows: Any, source: HuggingFaceSource, dataset: DatasetConfig) -> List[Any]:
    """Each row's finished caption, or the NoCaption that skips it."""
    uses_columns = dataset.caption_strategy == "huggingface" and not (
        dataset.only_instance_prompt and dataset.instance_prompt)
    if not uses_columns:
        return [_finished(dataset.instance_prompt, dataset)] * len(rows)  # the schema made sure there is one
    paths = list(source.caption_columns) + ([source.fallback_caption_column] if source.fallback_caption_column
                                            else [])
    captions: List[Any] = []
    for batch in _batches(rows, [p.split(".")[0] for p in paths]):
        for values in zip(*(_path_values(batch, path) for path in paths)):
            captions.append(_finished(next((t for t in map(caption_cell, values) if t), None), dataset))
    return captions


def _path_values(batch: Any, path: str) -> List[Any]:
    """One batch's values at a dotted path: Arrow walks struct fields; lists of structs are walked in Python."""
    import pyarrow as pa
    import pyarrow.compute as pc

    top, *rest = path.split(".")
    column = batch.column(top)
    while rest and pa.types.is_struct(column.type):
        column = pc.struct_field(column, rest.pop(0))
    values = column.to_pylist()
    return [column_value(value, rest) for value in values] if rest else values


def _finished(text: Optional[str], dataset: DatasetConfig) -> Any:
    """The caption after the dataset's clean-up, or the NoCaption that skips its row."""
    try:
        if not text:
            raise NoCaption(REASON_NO_CAPTION)
        return finish_caption(text, dataset)
    except NoCaption as missing:
        return missing


def mark_rows_undecodable(dataset: DatasetConfig, relative_paths: Iterable[str]) -> None:
    """Record that these rows' images failed to decode while caching, so later runs skip them at discovery.

    The mark lasts while the dataset is unchanged, and after a change for
    rows whose image bytes are the same (rows sized by columns are tried again).
    """
    cache = cache_of(dataset)
    saved = _load(cache)
    entries = saved.get("rows") or []
    marked = 0
    for name in relative_paths:
        index = row_index(name)
        if index < len(entries) and not isinstance(entries[index][2], str):
            entries[index] = [entries[index][0], entries[index][1], REASON_UNDECODABLE]
            marked += 1
    if marked:
        _save(cache, dataset, saved["identity"], entries)


def _load(cache: Storage) -> Dict[str, Any]:
    try:
        saved = read_json(cache, ROWS_FILE)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        logger.warning("%s is unreadable; every row is looked at again", cache.location(ROWS_FILE))
        return {}
    if not isinstance(saved, dict) or saved.get("version") != ROWS_VERSION or not isinstance(saved.get("rows"), list):
        return {}
    return saved


def _save(cache: Storage, dataset: DatasetConfig, identity: Dict[str, Any], entries: List[list]) -> None:
    try:
        write_json(cache, ROWS_FILE, {"version": ROWS_VERSION, "identity": identity, "rows": entries})
    except OSError as exc:
        raise DataError(f"dataset {dataset.id!r}: cannot write {cache.location(ROWS_FILE)} "
                        f"({exc.strerror or exc}); make key 'cache_dir_vae' point at a writable folder") from None
