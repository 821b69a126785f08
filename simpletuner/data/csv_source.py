"""Datasets listed as image URLs in a CSV file (``type: "csv"``).

The images are downloaded once into ``csv_cache_dir``, which from then on is
the dataset's folder: discovery, captions, buckets and caches treat it like
any local dataset, so a URL list costs one download and nothing per step.
A caption column becomes a ``.txt`` file beside each image, read by
``caption_strategy: "textfile"``.

A file already downloaded is not fetched again; downloads go to a temporary
name and are renamed into place, so an interrupted run leaves no half image
that a later run would trust.  URLs that fail are reported and left out; a
list where every URL fails stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from tqdm import tqdm

from simpletuner.data.walk import is_image_name
from simpletuner.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 60
DOWNLOAD_THREADS = 8  # downloads wait on the network, not the CPU


@dataclass(frozen=True)
class CsvSource:
    csv_file: str
    url_column: str
    caption_column: Optional[str]


@dataclass(frozen=True)
class _Row:
    url: str
    file_name: str
    caption: Optional[str]


def csv_source(merged: Dict[str, Any], where: str) -> Tuple[CsvSource, str]:
    """The CSV settings of a ``type: "csv"`` dataset and its download folder (absolute)."""
    for key in ("csv_file", "csv_cache_dir"):
        if not merged.get(key):
            raise ConfigError(f"{where}: key {key!r} is required with type 'csv'")
    csv_file = os.path.abspath(os.path.expanduser(merged["csv_file"]))
    if not os.path.isfile(csv_file):
        raise DataError(f"{where}: key 'csv_file' = {merged['csv_file']!r} is not a file (resolved to {csv_file})")
    caption_column = merged.get("csv_caption_column")
    if caption_column and merged["caption_strategy"] != "textfile":
        raise ConfigError(
            f"{where}: key 'csv_caption_column' saves captions as .txt files beside the downloads; set "
            f"'caption_strategy': 'textfile' (it is {merged['caption_strategy']!r})"
        )
    source = CsvSource(csv_file, merged.get("csv_url_column") or "url", caption_column)
    return source, os.path.abspath(os.path.expanduser(merged["csv_cache_dir"]))


def fetch_csv_images(dataset: Any, show_progress: bool = True) -> List[str]:
    """Download what is missing into the dataset's folder; return the URLs that failed."""
    source: CsvSource = dataset.csv
    folder = dataset.instance_data_dir
    os.makedirs(folder, exist_ok=True)
    rows = _read_rows(source, dataset.id)
    for row in rows:
        if source.caption_column:
            _write_if_changed(os.path.join(folder, os.path.splitext(row.file_name)[0] + ".txt"), row.caption or "")
    missing = [row for row in rows if not os.path.isfile(os.path.join(folder, row.file_name))]
    failed: List[str] = []
    if missing:
        bar = tqdm(total=len(missing), desc=f"downloading {dataset.id}", unit="img", disable=not show_progress)
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            for row, problem in zip(missing, pool.map(lambda r: _download(r, folder), missing)):
                bar.update(1)
                if problem:
                    failed.append(f"{row.url} ({problem})")
        bar.close()
    logger.info("dataset %r: %d URL(s) in %s, %d downloaded now, %d failed", dataset.id, len(rows),
                os.path.basename(source.csv_file), len(missing) - len(failed), len(failed))
    if failed:
        logger.warning("dataset %r: left out %d URL(s) that could not be downloaded: %s", dataset.id,
                       len(failed), "; ".join(failed[:3]) + ("; ..." if len(failed) > 3 else ""))
    if rows and len(failed) == len(rows):
        raise DataError(f"dataset {dataset.id!r}: none of the {len(rows)} URLs in {source.csv_file} could be "
                        f"downloaded (first: {failed[0]}); check the URLs and the network")
    return failed


def _read_rows(source: CsvSource, dataset_id: str) -> List[_Row]:
    where = f"dataset {dataset_id!r}: {source.csv_file}"
    try:
        with open(source.csv_file, "r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column in (source.url_column, source.caption_column):
                if column and column not in columns:
                    raise DataError(f"{where} has no column {column!r} (columns: {', '.join(columns) or 'none'}); "
                                    "set csv_url_column / csv_caption_column to the right names")
            records = list(reader)
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"{where} is not a readable CSV file ({exc})") from None
    rows: List[_Row] = []
    taken: set = set()
    for record in records:
        url = (record.get(source.url_column) or "").strip()
        if not url:
            continue
        name = _file_name(url)
        if name in taken:  # two URLs ending in the same name: keep both, apart
            stem, ext = os.path.splitext(name)
            name = f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:8]}{ext}"
        taken.add(name)
        caption = record.get(source.caption_column) if source.caption_column else None
        rows.append(_Row(url, name, caption.strip() if caption else caption))
    return rows


def _file_name(url: str) -> str:
    """A readable, safe local name: the URL's last path segment, with an image extension."""
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    name = posixpath.basename(path).replace("\\", "_") or "image"
    name = "".join(c if c.isprintable() and c not in '<>:"|?*' else "_" for c in name).lstrip(".") or "image"
    if not is_image_name(name):
        name += ".jpg"  # the header decides the real format; discovery needs an image extension to list it
    return name


def _download(row: _Row, folder: str) -> Optional[str]:
    target = os.path.join(folder, row.file_name)
    partial = target + ".partial"
    try:
        with urllib.request.urlopen(row.url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            data = response.read()
        if not data:
            return "empty response"
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, target)
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            if handle.read() == text:
                return  # keep the mtime, so nothing downstream thinks the caption changed
    except (OSError, UnicodeDecodeError):
        pass
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
