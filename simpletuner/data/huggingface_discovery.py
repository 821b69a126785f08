"""Discovery for ``type: huggingface`` datasets: each row's size, version and caption.

A row's size comes from ``width_column``/``height_column`` when both are set
(no image is parsed, let alone decoded), otherwise from its image bytes'
header (:mod:`simpletuner.data.headers`, the same parser as for files; a
pixel decode happens only where a header looks cut short).

Each row's version is its image's byte count and a 64-bit xxHash of its
bytes; they stand where a file's size and mtime stand in
:class:`~simpletuner.data.records.ImageRecord`, so latent cache keys
(:func:`~simpletuner.caching.keys.latent_key`: row name, size, version,
geometry) change for exactly the rows whose image changed.  The facts are
saved in ``<cache_dir_vae>/huggingface_rows.json`` together with the
dataset's fingerprint, split and revision: while those are unchanged, a run
reads no image byte at discovery; when they change, every row's bytes are
hashed again (no decode), and headers are parsed only for rows whose bytes
changed.

Captions are read from their columns on every run (only those columns are
read), so a fixed caption takes effect with nothing to invalidate.  Rows
without an image, with an unreadable one, or without a caption are skipped
and counted in the summary like bad files.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import xxhash
from tqdm import tqdm

from simpletuner.data.captions import NoCaption, REASON_NO_CAPTION, finish_caption, raw_caption
from simpletuner.data.discovery import DiscoveryResult
from simpletuner.data.headers import UnreadableImage, read_stored_image_size
from simpletuner.data.huggingface_source import (
    HuggingFaceRows,
    HuggingFaceSource,
    column_value,
    image_bytes,
    load_rows,
    row_name,
)
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.tables import _caption_cell as caption_text
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
    for index, (entry, caption) in enumerate(zip(entries, captions)):
        name = row_name(index)
        reason = entry[2] if isinstance(entry[2], str) else (caption if isinstance(caption, NoCaption) else None)
        if reason is not None:
            skipped.setdefault(getattr(reason, "reason", reason), []).append(name)
            continue
        records.append(ImageRecord(path=name, relative_path=name, width=entry[2], height=entry[3],
                                   size_bytes=entry[0], mtime_ns=entry[1], caption=caption, storage=storage))
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
    columns = [source.image_column] + ([source.width_column, source.height_column] if source.sizes_from_columns
                                       else [])
    entries: List[list] = []
    reads = 0
    bar = tqdm(total=len(rows), desc=f"discovering {dataset_id}", unit="row", disable=not progress, leave=False)
    with bar:
        for batch in _batches(rows, columns):
            images = batch.column(source.image_column).to_pylist()
            widths = batch.column(source.width_column).to_pylist() if source.sizes_from_columns else None
            heights = batch.column(source.height_column).to_pylist() if source.sizes_from_columns else None
            for offset, cell in enumerate(images):
                index = len(entries)
                data = image_bytes(cell)
                if not data:
                    entries.append([0, 0, REASON_NO_IMAGE])
                    continue
                size, version = len(data), xxhash.xxh3_64_intdigest(data)
                if widths is not None:
                    entries.append(_column_entry(size, version, widths[offset], heights[offset]))
                    continue
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
        return [_finished(lambda name=row_name(i): raw_caption(name, dataset), dataset) for i in range(len(rows))]
    paths = list(source.caption_columns) + ([source.fallback_caption_column] if source.fallback_caption_column
                                            else [])
    top = [p.split(".")[0] for p in paths]
    captions: List[Any] = []
    for batch in _batches(rows, top):
        cells = {name: batch.column(name).to_pylist() for name in dict.fromkeys(top)}
        for offset in range(batch.num_rows):
            row = {name: values[offset] for name, values in cells.items()}
            text = next((t for t in (caption_text(column_value(row, p)) for p in paths) if t), None)
            captions.append(_finished(lambda text=text: _required(text), dataset))
    return captions


def _required(text: Optional[str]) -> str:
    if not text:
        raise NoCaption(REASON_NO_CAPTION)
    return text


def _finished(raw: Callable[[], str], dataset: DatasetConfig) -> Any:
    try:
        return finish_caption(raw(), dataset)
    except NoCaption as missing:
        return missing


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
