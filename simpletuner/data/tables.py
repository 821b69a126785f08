"""Caption and size tables: the ``parquet`` block of a dataset (parquet or JSON Lines files).

A dataset with ``caption_strategy: parquet`` takes each image's caption from
a table, and one with ``metadata_backend: parquet`` takes each image's width
and height from it too, so discovery never opens the images.  The block::

    "parquet": {
        "path": "captions.parquet",          # .parquet, or .jsonl / .json (JSON Lines)
        "filename_column": "filename",       # default "filename"
        "caption_column": "caption",         # default "caption"
        "fallback_caption_column": "tags",   # used when caption_column is empty
        "width_column": "width",             # needed by metadata_backend parquet
        "height_column": "height",
        "identifier_includes_extension": true
    }

``path`` may be absolute; a relative path is looked for inside
``instance_data_dir`` first, then from the working directory.  A row
matches an image by its path relative to the dataset folder, or by its file
name; when ``identifier_includes_extension`` is false (the values are ids
such as ``12345``), by the same without the extension.  A list-valued
caption cell uses its first non-empty entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

from simpletuner.config.coerce import unknown_key_message
from simpletuner.errors import ConfigError, DataError

_BLOCK_DEFAULTS: Dict[str, Any] = {
    "path": None,
    "filename_column": "filename",
    "caption_column": "caption",
    "fallback_caption_column": None,
    "width_column": None,
    "height_column": None,
    "identifier_includes_extension": False,
}


@dataclass(frozen=True)
class ParquetSpec:
    path: str  # absolute
    filename_column: str = "filename"
    caption_column: str = "caption"
    fallback_caption_column: Optional[str] = None
    width_column: Optional[str] = None
    height_column: Optional[str] = None
    identifier_includes_extension: bool = False


@dataclass(frozen=True)
class TableRow:
    caption: Optional[str]
    width: Optional[int]
    height: Optional[int]


def parse_parquet_block(value: Any, where: str, data_dir: str) -> ParquetSpec:
    """Validate the ``parquet`` block of dataset ``where``; resolve its path."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = {"path": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: key 'parquet' must be an object such as "
                          '{"path": "captions.parquet", "caption_column": "caption"}')
    for key in value:
        if key not in _BLOCK_DEFAULTS:
            message = unknown_key_message(key, _BLOCK_DEFAULTS, f"{where}: parquet block", prefix="")
            raise ConfigError(message.replace(": unknown option ", ": unknown key ", 1))
    merged = {**_BLOCK_DEFAULTS, **{k: v for k, v in value.items() if v is not None}}
    if not merged["path"]:
        raise ConfigError(f"{where}: the parquet block needs 'path', the table file")
    for key in ("filename_column", "caption_column", "fallback_caption_column", "width_column", "height_column"):
        if merged[key] is not None and not isinstance(merged[key], str):
            raise ConfigError(f"{where}: parquet block key {key!r} must be a column name, got {merged[key]!r}")
    flag = merged["identifier_includes_extension"]
    if isinstance(flag, str):
        flag = flag.strip().lower() in ("true", "1", "yes")
    return ParquetSpec(
        path=_resolve(str(merged["path"]), data_dir, where),
        filename_column=merged["filename_column"],
        caption_column=merged["caption_column"],
        fallback_caption_column=merged["fallback_caption_column"],
        width_column=merged["width_column"],
        height_column=merged["height_column"],
        identifier_includes_extension=bool(flag),
    )


def _resolve(path: str, data_dir: str, where: str) -> str:
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        candidates = [path]
    else:
        candidates = [os.path.join(data_dir, path), os.path.abspath(path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise DataError(f"{where}: parquet table {path!r} not found (looked at {', '.join(candidates)}); "
                    "fix the block's 'path'")


class MetadataTable:
    """Rows of a parquet/JSON Lines table, looked up by image path."""

    def __init__(self, spec: ParquetSpec, rows: Dict[str, TableRow], where: str) -> None:
        self.spec = spec
        self.rows = rows
        self.where = where
        self.matched: set = set()

    @classmethod
    def load(cls, spec: ParquetSpec, where: str) -> "MetadataTable":
        columns = [spec.filename_column, spec.caption_column, spec.fallback_caption_column,
                   spec.width_column, spec.height_column]
        wanted = [c for c in dict.fromkeys(columns) if c]
        records = _read_records(spec.path, wanted, where)
        rows: Dict[str, TableRow] = {}
        for record in records:
            name = record.get(spec.filename_column)
            if name is None or name == "":
                continue
            key = _normalise(str(name))
            rows[key] = TableRow(
                caption=caption_cell(record.get(spec.caption_column))
                or caption_cell(record.get(spec.fallback_caption_column)),
                width=_size_cell(record.get(spec.width_column)),
                height=_size_cell(record.get(spec.height_column)),
            )
        return cls(spec, rows, where)

    def row_for(self, relative_path: str) -> Optional[TableRow]:
        """The row describing the image at ``relative_path`` (inside the dataset), if any."""
        for key in self._candidates(relative_path):
            row = self.rows.get(key)
            if row is not None:
                self.matched.add(key)
                return row
        return None

    def _candidates(self, relative_path: str) -> Iterator[str]:
        name = relative_path.rsplit("/", 1)[-1]
        yield relative_path
        yield name
        if not self.spec.identifier_includes_extension:
            yield os.path.splitext(relative_path)[0]
            yield os.path.splitext(name)[0]

    def unmatched(self) -> List[str]:
        """Table entries no image matched (images listed but missing)."""
        return sorted(set(self.rows) - self.matched)


def _normalise(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def caption_cell(value: Any) -> Optional[str]:
    """A cell's caption: text stripped, bytes decoded, a list's first non-empty entry; None when empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        for item in value:
            text = caption_cell(item)
            if text:
                return text
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None
    text = str(value).strip()
    return text or None


def _size_cell(value: Any) -> Optional[int]:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number < 1 or not number.is_integer():
        return None
    return int(number)


def _read_records(path: str, columns: List[str], where: str) -> List[Mapping[str, Any]]:
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            return _read_parquet(path, columns, where)
        return _read_json_lines(path, where)
    except OSError as exc:
        raise DataError(f"{where}: parquet table {path} cannot be read ({exc.strerror or exc})") from None


def _read_parquet(path: str, columns: List[str], where: str) -> List[Mapping[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError(f"{where}: reading {path} needs pyarrow; pip install pyarrow") from None
    try:
        schema_names = set(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{where}: {path} is not a readable parquet file ({exc})") from None
    _check_columns(columns, schema_names, path, where)
    table = pq.read_table(path, columns=columns)
    return table.to_pylist()


def _read_json_lines(path: str, where: str) -> List[Mapping[str, Any]]:
    with open(path, "r", encoding="utf-8-sig") as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # a plain JSON list of objects is accepted too
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: {path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: {path} line {number}: invalid JSON ({exc.msg})") from None
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{where}: {path} must hold one JSON object per line")
    return records


def _check_columns(columns: List[str], available: set, path: str, where: str) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {', '.join(missing)}; it has: "
                        f"{', '.join(sorted(available))}")

