"""Finding a dataset's images, their sizes and captions, fast and incrementally.

Sizes come from file headers (``PIL.Image.open`` parses only the header; no
pixels are decoded), read in a thread pool, with a progress bar.  They are
saved per dataset in ``<cache_dir_vae>/discovery.json`` keyed by relative
path with the file's size and mtime, so a later run re-reads only files that
are new or changed; that file holds raw facts only (no bucket or crop
settings), so changing resolution or crop never invalidates it.

Bad files never stop discovery: each is skipped with a reason (empty file,
not an image, unreadable, too large, no caption...) that the summary shows.
Captions are re-read on every run; they are cheap, and edits then take
effect without any cache to invalidate.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from simpletuner.data.captions import NoCaption, caption_for
from simpletuner.data.orientation import header_orientation, upright_size
from simpletuner.data.records import ImageRecord
from simpletuner.data.schema import DatasetConfig
from simpletuner.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
DISCOVERY_FILE = "discovery.json"
CACHE_VERSION = 1

REASON_EMPTY = "empty file"
REASON_NOT_IMAGE = "not an image"
REASON_UNREADABLE = "unreadable"
REASON_TOO_LARGE = "too large (decompression bomb guard)"

_CHUNK = 128  # files per pool task: large enough to amortise task overhead, small for a live bar

HeaderReader = Callable[[str], Tuple[int, int]]


class UnreadableImage(Exception):
    """A header reader could not get a size; ``reason`` goes to the skip summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_image_size(path: str) -> Tuple[int, int]:
    """(width, height) of the image at ``path`` as seen upright, from its header only.

    Raises :class:`UnreadableImage` for anything that is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = header_orientation(image)
    except Image.DecompressionBombError:
        raise UnreadableImage(REASON_TOO_LARGE) from None
    except UnidentifiedImageError:
        raise UnreadableImage(REASON_NOT_IMAGE) from None
    except Exception:  # PIL raises OSError, SyntaxError, struct.error... for broken headers
        raise UnreadableImage(REASON_UNREADABLE) from None
    if width <= 0 or height <= 0:
        raise UnreadableImage(REASON_UNREADABLE)
    return upright_size(width, height, orientation)


@dataclass(frozen=True)
class _File:
    relative_path: str
    path: str
    size_bytes: int
    mtime_ns: int


@dataclass
class DiscoveryResult:
    """What discovery found in one dataset."""

    dataset_id: str
    records: List[ImageRecord]  # usable images, sorted by relative_path
    skipped: Dict[str, List[str]]  # reason -> sorted relative paths
    files_found: int = 0  # files with an image extension
    header_reads: int = 0  # headers actually read this run (the rest came from the cache)

    def summary(self) -> str:
        """One line for the log: found, usable, and skips by reason."""
        parts = [f"dataset {self.dataset_id!r}: {self.files_found} image files, "
                 f"{len(self.records)} usable"]
        if self.skipped:
            reasons = ", ".join(f"{reason}: {len(paths)}" for reason, paths in sorted(self.skipped.items()))
            parts.append(f"skipped ({reasons})")
        return "; ".join(parts)


@dataclass
class _Outcome:
    file: _File
    cache_entry: Optional[dict] = None  # None when the cache already had it
    width: int = 0
    height: int = 0
    caption: Optional[str] = None
    skip: Optional[str] = None
    read: bool = False


@dataclass
class _Context:
    dataset: DatasetConfig
    cached: Dict[str, dict]
    reader: HeaderReader
    outcomes: List[_Outcome] = field(default_factory=list)


def discover(
    dataset: DatasetConfig,
    progress: bool = True,
    reader: HeaderReader = read_image_size,
    workers: Optional[int] = None,
) -> DiscoveryResult:
    """Scan ``dataset.instance_data_dir`` and return its usable images.

    ``reader`` returns (width, height) for a path; it is a parameter so tests
    can count header reads and other backends can supply their own.
    """
    cache_path = os.path.join(dataset.cache_dir_vae, DISCOVERY_FILE)
    cached = _load_cache(cache_path)
    files, skipped = _walk(dataset)
    context = _Context(dataset=dataset, cached=cached, reader=reader)
    outcomes = _process_all(context, files, progress, workers)
    records: List[ImageRecord] = []
    header_reads = 0
    for outcome in outcomes:
        header_reads += outcome.read
        if outcome.skip is not None:
            skipped.setdefault(outcome.skip, []).append(outcome.file.relative_path)
            continue
        records.append(_record(outcome))
    try:
        _save_cache_if_changed(cache_path, cached, outcomes)
    except OSError as exc:
        raise DataError(
            f"dataset {dataset.id!r}: cannot write {cache_path} ({exc.strerror or exc}); make key "
            "'cache_dir_vae' point at a writable folder"
        ) from None
    records.sort(key=lambda record: record.relative_path)
    for paths in skipped.values():
        paths.sort()
    result = DiscoveryResult(
        dataset_id=dataset.id,
        records=records,
        skipped=skipped,
        files_found=len(files),
        header_reads=header_reads,
    )
    logger.debug(result.summary())
    return result


def _record(outcome: _Outcome) -> ImageRecord:
    file = outcome.file
    return ImageRecord(
        path=file.path,
        relative_path=file.relative_path,
        width=outcome.width,
        height=outcome.height,
        size_bytes=file.size_bytes,
        mtime_ns=file.mtime_ns,
        caption=outcome.caption or "",
    )


def _walk(dataset: DatasetConfig) -> Tuple[List[_File], Dict[str, List[str]]]:
    """Image files under the data folder (recursive; hidden entries and the cache folder skipped)."""
    root = dataset.instance_data_dir
    excluded = {os.path.normcase(os.path.abspath(dataset.cache_dir_vae))}
    files: List[_File] = []
    skipped: Dict[str, List[str]] = {}
    for entry, relative in _scan(root, "", excluded, skipped):
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            stat = entry.stat()
        except OSError:
            skipped.setdefault(REASON_UNREADABLE, []).append(relative)
            continue
        files.append(_File(relative, entry.path, stat.st_size, stat.st_mtime_ns))
    files.sort(key=lambda f: f.relative_path)
    return files, skipped


def _scan(
    folder: str, prefix: str, excluded: set, skipped: Dict[str, List[str]]
) -> Iterator[Tuple[os.DirEntry, str]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        skipped.setdefault("unreadable folder", []).append(prefix or ".")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = f"{prefix}{entry.name}"
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            if os.path.normcase(os.path.abspath(entry.path)) not in excluded:
                yield from _scan(entry.path, relative + "/", excluded, skipped)
        elif entry.is_file():
            yield entry, relative


def _process_all(
    context: _Context, files: Sequence[_File], progress: bool, workers: Optional[int]
) -> List[_Outcome]:
    """Sizes (from cache or header) and captions for every file, in a thread pool."""
    chunks = [files[i : i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
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


def _process_chunk(context: _Context, chunk: Sequence[_File]) -> List[_Outcome]:
    return [_process_file(context, file) for file in chunk]


def _process_file(context: _Context, file: _File) -> _Outcome:
    outcome = _Outcome(file=file)
    if file.size_bytes == 0:
        outcome.skip = REASON_EMPTY
        return outcome
    entry = context.cached.get(file.relative_path)
    if not _entry_matches(entry, file):
        entry = _read_entry(context.reader, file)
        outcome.cache_entry = entry
        outcome.read = True
    if "skip" in entry:
        outcome.skip = entry["skip"]
        return outcome
    outcome.width, outcome.height = entry["width"], entry["height"]
    try:
        outcome.caption = caption_for(file.path, context.dataset)
    except NoCaption as missing:
        outcome.skip = missing.reason
    return outcome


def _entry_matches(entry: Optional[dict], file: _File) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("size_bytes") == file.size_bytes
        and entry.get("mtime_ns") == file.mtime_ns
        and (("width" in entry and "height" in entry) or "skip" in entry)
    )


def _read_entry(reader: HeaderReader, file: _File) -> dict:
    entry: dict = {"size_bytes": file.size_bytes, "mtime_ns": file.mtime_ns}
    try:
        width, height = reader(file.path)
    except UnreadableImage as bad:
        entry["skip"] = bad.reason
    else:
        entry["width"], entry["height"] = int(width), int(height)
    return entry


def _load_cache(path: str) -> Dict[str, dict]:
    """The saved per-file facts, or {} when absent, unreadable or from another version."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        logger.warning("discovery cache %s is unreadable; rescanning every file", path)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache_if_changed(path: str, cached: Dict[str, dict], outcomes: List[_Outcome]) -> None:
    entries: Dict[str, dict] = {}
    changed = False
    for outcome in outcomes:
        if outcome.file.size_bytes == 0:
            continue  # cheap to re-check from stat alone
        if outcome.cache_entry is not None:
            changed = True
            entries[outcome.file.relative_path] = outcome.cache_entry
        else:
            entries[outcome.file.relative_path] = cached[outcome.file.relative_path]
    if not changed and len(entries) == len(cached) and os.path.exists(path):
        return
    write_json_atomic(path, {"version": CACHE_VERSION, "files": entries})


def write_json_atomic(path: str, payload: object) -> None:
    """Write JSON to ``path`` so readers see the old file or the new one, never half of one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=folder, prefix=".discovery-", suffix=".tmp", delete=False
    )
    try:
        with handle:
            json.dump(payload, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
        raise
