"""Datasets that are Hugging Face datasets (``type: "huggingface"``): settings, loading, row access.

``dataset_name`` is a folder written by ``Dataset.save_to_disk``, a folder of
data files (parquet shards...) that ``datasets.load_dataset`` reads, or a hub
id loaded with ``load_dataset(name, split=, revision=)``.  Everything is read
through the ``datasets`` library: its Arrow files are memory-mapped, so a
row's image bytes are read only when that row is asked for.

A row is named ``row-<index>`` (zero-padded so names sort in row order); that
name is the record's ``relative_path`` in reports and cache keys.
:class:`HuggingFaceRows` is the record's ``storage``: reading ``row-00000042``
returns that row's image bytes, so latent caching, face detection and header
parsing use it exactly like an object in a bucket.

Mistakes in the settings (no such folder, split or column) are one line
naming the dataset and the key (exit code 2).  They are found when the
dataset is loaded, at discovery, because a hub dataset cannot be looked at
without downloading it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from simpletuner.errors import ConfigError, DataError
from simpletuner.storage.base import Storage, StoredObject

ROW_PREFIX = "row-"


@dataclass(frozen=True)
class HuggingFaceSource:
    """Where a ``type: huggingface`` dataset is and which columns mean what."""

    dataset_name: str  # absolute folder, or a hub id
    is_local: bool
    split: str = "train"
    revision: Optional[str] = None
    image_column: str = "image"
    caption_columns: Tuple[str, ...] = ()  # first non-empty wins; each may be a dotted path
    fallback_caption_column: Optional[str] = None
    width_column: Optional[str] = None
    height_column: Optional[str] = None
    num_proc: Optional[int] = None

    @property
    def sizes_from_columns(self) -> bool:
        return bool(self.width_column and self.height_column)


def huggingface_source(merged: Dict[str, Any], values: Dict[str, Any], where: str) -> HuggingFaceSource:
    """The settings of a ``type: huggingface`` dataset, checked without loading it.

    ``merged`` holds the dataset's values over the global defaults and
    ``values`` only what the dataset itself set (to tell a caption_strategy
    left at the global default from one chosen for this dataset); a
    caption_strategy left at the default becomes ``huggingface`` in ``merged``.
    """
    name = merged.get("dataset_name")
    if not name:
        raise ConfigError(f"{where}: key 'dataset_name' is required with type 'huggingface'; set it to a hub "
                          "dataset id or a local dataset folder")
    strategy = merged["caption_strategy"]
    if strategy not in ("huggingface", "instanceprompt"):
        if "caption_strategy" in values:
            raise ConfigError(f"{where}: key 'caption_strategy' = {strategy!r} does not apply to type "
                              "'huggingface'; use 'huggingface' (captions from caption_column) or 'instanceprompt'")
        merged["caption_strategy"] = "huggingface"
    if merged["metadata_backend"] == "parquet":
        raise ConfigError(f"{where}: key 'metadata_backend' = 'parquet' does not apply to type 'huggingface'; "
                          "use 'huggingface' (sizes from width_column/height_column or the image headers)")
    columns = _caption_columns(merged.get("caption_column"), where)
    if merged["caption_strategy"] == "huggingface" and not columns:
        raise ConfigError(f"{where}: key 'caption_column' is required with caption_strategy 'huggingface'; "
                          "name the column holding the captions (or use caption_strategy 'instanceprompt')")
    if bool(merged.get("width_column")) != bool(merged.get("height_column")):
        raise ConfigError(f"{where}: keys 'width_column' and 'height_column' work together; set both or neither")
    local = _local_path(str(name))
    if local is not None and not os.path.exists(local):
        raise DataError(f"{where}: key 'dataset_name' = {name!r} is not a folder (resolved to {local}); fix "
                        f"the path (relative paths start at {os.getcwd()}) or give a hub id like 'owner/name'")
    return HuggingFaceSource(
        dataset_name=local or str(name),
        is_local=local is not None,
        split=merged.get("split") or "train",
        revision=merged.get("revision"),
        image_column=merged.get("image_column") or "image",
        caption_columns=columns,
        fallback_caption_column=merged.get("fallback_caption_column"),
        width_column=merged.get("width_column"),
        height_column=merged.get("height_column"),
        num_proc=merged.get("num_proc"),
    )


HUGGINGFACE_KEYS = ("dataset_name", "split", "revision", "image_column", "caption_column",
                    "fallback_caption_column", "width_column", "height_column", "num_proc")


def check_huggingface_keys(merged: Dict[str, Any], values: Dict[str, Any], where: str) -> None:
    """The huggingface keys and values on a dataset of another type would be silently ignored: refuse them."""
    if merged["type"] == "huggingface":
        return
    for key, value in (("caption_strategy", "huggingface"), ("metadata_backend", "huggingface")):
        if merged.get(key) == value:
            raise ConfigError(f"{where}: key {key!r} = 'huggingface' needs 'type': 'huggingface' (the type is "
                              f"{merged['type']!r}); set the type or choose another {key}")
    for key in HUGGINGFACE_KEYS:
        if values.get(key) is not None:
            raise ConfigError(f"{where}: key {key!r} applies to 'type': 'huggingface' only (the type is "
                              f"{merged['type']!r}); remove it or set the type")


def _caption_columns(value: Any, where: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    names = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{where}: key 'caption_column' must be a column name or a list of names, got {value!r}")
    return tuple(n.strip() for n in names)


def _local_path(name: str) -> Optional[str]:
    """The absolute folder ``name`` means, or None for a hub id (``owner/name`` that is no path here)."""
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded) or name.startswith((".", "~")) or os.path.exists(expanded):
        return os.path.abspath(expanded)
    return None


def row_name(index: int) -> str:
    """``row-00000042``: eight digits, so names sort in row order up to 100 million rows."""
    return f"{ROW_PREFIX}{index:08d}"


def row_index(name: str) -> int:
    return int(name[len(ROW_PREFIX):])


# --------------------------------------------------------------------------------------------- loading


def load_rows(source: HuggingFaceSource, dataset_id: str) -> Any:
    """The split as a ``datasets.Dataset``; a ConfigError/DataError naming the key when it cannot be had."""
    import datasets

    where = f"dataset {dataset_id!r}"
    try:
        if source.is_local and _saved_to_disk(source.dataset_name):
            loaded = datasets.load_from_disk(source.dataset_name)
            rows = _pick_split(loaded, source.split, where) if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            rows = datasets.load_dataset(source.dataset_name, split=source.split, revision=source.revision,
                                         num_proc=source.num_proc)
    except ConfigError:
        raise
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise ConfigError(f"{where}: key 'split' = {source.split!r} is not in {source.dataset_name!r} "
                              f"({_first_line(exc)}); set it to one of the dataset's splits") from None
        raise DataError(f"{where}: key 'dataset_name' = {source.dataset_name!r} cannot be loaded "
                        f"({_first_line(exc)})") from None
    except (OSError, ImportError, RuntimeError) as exc:  # FileNotFoundError, DatasetNotFoundError, no network
        raise DataError(f"{where}: key 'dataset_name' = {source.dataset_name!r} cannot be loaded "
                        f"({type(exc).__name__}: {_first_line(exc)}); check the name, the revision and the "
                        "network (or log in for a private dataset)") from None
    check_columns(rows, source, where)
    return rows


def _saved_to_disk(folder: str) -> bool:
    """A ``save_to_disk`` folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("state.json", "dataset_dict.json"))


def _pick_split(loaded: Any, split: str, where: str) -> Any:
    if split not in loaded:
        raise ConfigError(f"{where}: key 'split' = {split!r} is not in the saved dataset; use one of: "
                          f"{', '.join(sorted(loaded))}")
    return loaded[split]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_columns(rows: Any, source: HuggingFaceSource, where: str) -> None:
    """Every configured column exists (dotted paths down through struct columns)."""
    import datasets

    known = ", ".join(rows.column_names)
    keyed: List[Tuple[str, Optional[str]]] = [("image_column", source.image_column)]
    keyed += [("caption_column", c) for c in source.caption_columns]
    keyed += [("fallback_caption_column", source.fallback_caption_column),
              ("width_column", source.width_column), ("height_column", source.height_column)]
    for key, column in keyed:
        if column and not _has_path(rows.features, column):
            raise ConfigError(f"{where}: key {key!r} = {column!r} is not a column of {source.dataset_name!r} "
                              f"(columns: {known}); set {key} to one of them")
    image = rows.features[source.image_column]
    if not (isinstance(image, datasets.Image) or getattr(image, "dtype", None) in ("binary", "large_binary")):
        raise ConfigError(f"{where}: key 'image_column' = {source.image_column!r} holds {image!r}, not images; "
                          "name the column with the Image feature (or raw image bytes)")


def _has_path(features: Any, path: str) -> bool:
    level: Any = features
    for part in path.split("."):
        if isinstance(level, (list, tuple)) and len(level) == 1:
            level = level[0]  # a list of structs: look inside the struct
        level = getattr(level, "feature", level)  # Sequence / List wrap their item feature
        if not isinstance(level, dict) or part not in level:
            return False
        level = level[part]
    return True


def image_rows(rows: Any, image_column: str) -> Any:
    """Only the image column, as ``{"bytes", "path"}`` dicts (never decoded) or raw bytes."""
    import datasets

    rows = rows.select_columns([image_column])
    if isinstance(rows.features[image_column], datasets.Image):
        rows = rows.cast_column(image_column, datasets.Image(decode=False))
    return rows


def image_bytes(cell: Any) -> Optional[bytes]:
    """The encoded image in one cell: its bytes, or the file its path names; None when there is neither."""
    if cell is None:
        return None
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    data, path = cell.get("bytes"), cell.get("path")
    if data:
        return bytes(data)
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read()
    return None


# --------------------------------------------------------------------------------------------- storage


@dataclass
class HuggingFaceRows(Storage):
    """A dataset's image column as a read-only storage: ``read("row-00000042")`` is that row's image.

    The dataset is loaded on first use and per process (a pickled copy
    reloads it: Arrow files are memory-mapped, so that is cheap).
    """

    source: HuggingFaceSource
    dataset_id: str
    _rows: Any = field(default=None, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> Dict[str, Any]:
        return {"source": self.source, "dataset_id": self.dataset_id}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.source, self.dataset_id = state["source"], state["dataset_id"]
        self._rows, self._lock = None, threading.Lock()

    def attach(self, rows: Any) -> "HuggingFaceRows":
        """Use an already-loaded dataset (discovery has one) instead of loading it again."""
        self._rows = image_rows(rows, self.source.image_column)
        return self

    def _images(self) -> Any:
        with self._lock:
            if self._rows is None:
                self._rows = image_rows(load_rows(self.source, self.dataset_id), self.source.image_column)
            return self._rows

    def location(self, name: str = "") -> str:
        where = f"{self.source.dataset_name}[{self.source.split}]"
        return f"{where} {name}" if name else where

    def read(self, name: str) -> bytes:
        index = row_index(name)
        rows = self._images()
        if not 0 <= index < len(rows):
            raise FileNotFoundError(self.location(name))
        data = image_bytes(rows[index][self.source.image_column])
        if data is None:
            raise FileNotFoundError(self.location(name))
        return data

    def read_head(self, name: str, count: int) -> Tuple[bytes, int]:
        data = self.read(name)
        return data[:count], len(data)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        return self.read(name)[start:stop]

    def write(self, name: str, data: bytes, durable: bool = False) -> None:
        raise PermissionError(f"{self.location(name)} is a Hugging Face dataset; it is never written")

    def exists(self, name: str) -> bool:
        try:
            return 0 <= row_index(name) < len(self._images())
        except ValueError:
            return False

    def delete(self, name: str) -> None:
        raise PermissionError(f"{self.location(name)} is a Hugging Face dataset; it is never changed")

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        for index in range(len(self._images())):
            name = row_name(index)
            if name.startswith(prefix):
                yield StoredObject(name, 0, 0)

    def child(self, name: str) -> "Storage":
        raise NotImplementedError("a Hugging Face dataset has no folders")


def column_value(row: Dict[str, Any], path: Union[str, Sequence[str]]) -> Any:
    """The value at a dotted path in one row (as ``to_pylist`` gives it); None where a level is missing."""
    value: Any = row
    for part in (path.split(".") if isinstance(path, str) else path):
        if isinstance(value, list):  # a list of structs: the first item that has the field
            value = next((item.get(part) for item in value if isinstance(item, dict) and item.get(part)), None)
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value
