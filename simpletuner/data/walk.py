"""Listing a dataset folder: image files with their size and mtime, and what was passed over.

The walk is recursive and never fails on what it meets:

* hidden entries (name starting with ``.``) are not used: a hidden image file
  is reported as skipped, a hidden folder (``.git``, ``.thumbnails``) is
  named in the summary without being entered;
* a folder whose name looks like an image (``album.jpg/``) is a folder and is
  entered like any other;
* symbolic links are followed, to files and to folders; a broken link, a
  link loop, or a folder link that leads back to a folder already being
  walked is reported instead of followed forever;
* a folder that cannot be listed is reported, and the rest goes on.

``os.scandir`` supplies each entry's type without a system call, so the only
per-file cost is the ``stat`` whose size and mtime identify the file's
version for the caches.

A bucket has no folders, only object names with ``/`` in them; its listing
(:func:`list_objects`) applies the same rules to the names: a hidden path
component hides what is under it, hidden image objects are reported, and
``folder/`` marker objects are passed over.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Set, Tuple

if TYPE_CHECKING:
    from simpletuner.storage.base import StoredObject

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

REASON_HIDDEN = "hidden file"
REASON_BROKEN_LINK = "broken or looping link"
REASON_FOLDER_LOOP = "folder link loop"
REASON_UNLISTABLE = "folder cannot be listed"
REASON_UNSTATABLE = "unreadable"


@dataclass
class Listing:
    """The files found, as columns: ``names[i]`` has ``sizes[i]`` bytes and mtime ``mtimes[i]``.

    Columns, not an object per file: a million files' sizes and mtimes are two
    8 MB arrays instead of two million int objects that live as long as the
    listing and, freed, leave the heap fragmented around the records kept.
    """

    names: List[str] = field(default_factory=list)  # "/"-separated relative paths, sorted
    sizes: "array[int]" = field(default_factory=lambda: array("q"))
    mtimes: "array[int]" = field(default_factory=lambda: array("q"))  # a list if one does not fit 64 bits
    # What a file's relative path is appended to: the folder with a trailing separator, or the object
    # key prefix.  One string for every file (a million absolute paths would be 100 MB).
    base: str = ""
    skipped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> relative paths
    hidden_folders: List[str] = field(default_factory=list)
    folders_skipped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> "folder/" paths

    def add(self, relative_path: str, size_bytes: int, mtime_ns: int) -> None:
        self.names.append(relative_path)
        self.sizes.append(size_bytes)
        self.add_mtime(mtime_ns)

    def add_mtime(self, mtime_ns: int) -> None:
        try:
            self.mtimes.append(mtime_ns)
        except OverflowError:  # past 2262 or before 1677 (a damaged file system's): keep it exact in a list
            self.mtimes = list(self.mtimes)  # type: ignore[assignment]
            self.mtimes.append(mtime_ns)

    def skip(self, reason: str, relative_path: str) -> None:
        self.skipped.setdefault(reason, []).append(relative_path)

    def skip_folder(self, reason: str, relative_path: str) -> None:
        self.folders_skipped.setdefault(reason, []).append(relative_path)


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def list_images(root: str, excluded: Set[str]) -> Listing:
    """Image files under ``root``; folders whose absolute path is in ``excluded`` are not entered."""
    listing = Listing(base=os.path.join(root, ""))
    try:
        root_stat = os.stat(root)
    except OSError:
        listing.skip_folder(REASON_UNLISTABLE, "./")
        return listing
    _walk(root, "", excluded, {(root_stat.st_dev, root_stat.st_ino)}, listing)
    return listing


def _walk(folder: str, prefix: str, excluded: Set[str], active: Set[Tuple[int, int]], listing: Listing) -> None:
    # Files come out sorted by relative path without sorting them all at the end: each folder's
    # entries are visited in the order of their name, with "/" appended to folders' names ("a.png"
    # before "a/x.png", as in the full paths), depth first.
    try:
        with os.scandir(folder) as iterator:
            entries = []
            for entry in iterator:
                try:
                    is_link = entry.is_symlink()
                    is_dir = entry.is_dir()  # follows links; False for broken ones
                except OSError:
                    is_link, is_dir = True, False
                entries.append((entry.name + "/" if is_dir else entry.name, entry, is_link, is_dir))
    except OSError:
        listing.skip_folder(REASON_UNLISTABLE, prefix or "./")
        return
    entries.sort()  # by the first item: names are unique, so the DirEntry objects are never compared
    names, sizes, mtimes = listing.names.append, listing.sizes.append, listing.mtimes.append
    for _, entry, is_link, is_dir in entries:
        name = entry.name
        relative = prefix + name
        if name.startswith("."):
            if is_dir:
                listing.hidden_folders.append(relative + "/")
            elif is_image_name(name):
                listing.skip(REASON_HIDDEN, relative)
            continue
        if is_dir:
            _enter(entry, relative, excluded, active, listing)
            continue
        dot = name.rfind(".")
        if dot <= 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            stat = entry.stat()  # follows links
        except OSError:
            listing.skip(REASON_BROKEN_LINK if is_link else REASON_UNSTATABLE, relative)
            continue
        if stat.st_mode & 0o170000 != 0o100000:  # not a regular file (S_ISREG): a socket, fifo or device
            continue
        names(relative)
        sizes(stat.st_size)
        try:
            mtimes(stat.st_mtime_ns)
        except OverflowError:
            listing.add_mtime(stat.st_mtime_ns)  # makes the column a list
            mtimes = listing.mtimes.append


def _enter(entry: os.DirEntry, relative: str, excluded: Set[str], active: Set[Tuple[int, int]],
           listing: Listing) -> None:
    if os.path.normcase(os.path.abspath(entry.path)) in excluded:
        return
    try:
        stat = entry.stat()
    except OSError:
        listing.skip_folder(REASON_BROKEN_LINK, relative + "/")
        return
    identity = (stat.st_dev, stat.st_ino)
    if identity in active:  # a link back to a folder we are inside: following it never ends
        listing.skip_folder(REASON_FOLDER_LOOP, relative + "/")
        return
    active.add(identity)
    try:
        _walk(entry.path, relative + "/", excluded, active, listing)
    finally:
        active.discard(identity)


def _first(item: tuple) -> str:
    return item[0]


def list_objects(objects: Iterable["StoredObject"], key_prefix: str, excluded: Set[str]) -> Listing:
    """Image objects of a bucket listing under ``key_prefix``, less names starting with an ``excluded`` prefix.

    ``objects`` are named relative to ``key_prefix``; each file's ``path`` is
    its full object key.
    """
    listing = Listing(base=key_prefix)
    hidden_folders: Set[str] = set()
    found: List[Tuple[str, int, int]] = []
    append = found.append
    for stored in objects:
        relative = stored.name
        if not relative or relative.endswith("/") or any(relative.startswith(p) for p in excluded):
            continue
        parts = relative.split("/")
        hidden = next((i for i, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        if hidden is not None:
            hidden_folders.add("/".join(parts[: hidden + 1]) + "/")
            continue
        name = parts[-1]
        if not is_image_name(name):
            continue
        if name.startswith("."):
            listing.skip(REASON_HIDDEN, relative)
            continue
        append((relative, stored.size, stored.mtime_ns))
    found.sort(key=_first)
    for relative, size, mtime in found:
        listing.add(relative, size, mtime)
    listing.hidden_folders = sorted(hidden_folders)
    return listing
