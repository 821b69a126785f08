"""Captions for images: one function per ``caption_strategy``, then the dataset's clean-up.

Captions are cheap to read, so discovery reads them again on every run
instead of caching them: editing a ``.txt`` file takes effect on the next
run with nothing to invalidate.  An image whose caption cannot be had is not
an error: :class:`NoCaption` carries the skip reason that discovery reports.

After the strategy produced the raw caption, :func:`finish_caption` applies,
in this order: common LLM opening removal (``remove_common_llm_caption_prefixes``),
the caption filter lists (the dataset's, then its text_embeds dataset's), and
``only_instance_prompt`` / ``prepend_instance_prompt``.  The instance prompt
comes last so that filters never edit the user's own trigger words.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional

from simpletuner.data.caption_filters import apply_filters, strip_llm_prefix
from simpletuner.data.schema import DatasetConfig
from simpletuner.data.tables import MetadataTable

if TYPE_CHECKING:
    from simpletuner.storage.base import Storage

REASON_NO_CAPTION = "no caption"
REASON_EMPTY_CAPTION = "empty caption"
REASON_CAPTION_NOT_UTF8 = "caption not UTF-8"
REASON_FILTERED_EMPTY = "caption empty after filters"
REASON_NOT_IN_TABLE = "not in parquet table"

_READ_LIMIT = 1 << 20  # a caption file larger than 1 MiB is not a caption
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_BOM = b"\xef\xbb\xbf"


class NoCaption(Exception):
    """The image has no usable caption; ``reason`` is what the skip summary shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def caption_for(
    image_path: str,
    dataset: DatasetConfig,
    table: Optional[MetadataTable] = None,
    relative_path: Optional[str] = None,
    storage: Optional["Storage"] = None,
) -> str:
    """The finished caption of ``image_path``; raises NoCaption.

    ``table`` is the dataset's parquet table (``caption_strategy: parquet``)
    and ``relative_path`` the image's path inside the dataset, used to find
    its row.  ``storage`` is the bucket ``image_path`` is a key in (None: a
    local file).
    """
    return finish_caption(raw_caption(image_path, dataset, table, relative_path, storage), dataset)


def captioner(
    dataset: DatasetConfig, table: Optional[MetadataTable] = None, storage: Optional["Storage"] = None
) -> Callable[[str, str], str]:
    """:func:`caption_for` with the dataset's settings looked at once: ``(image_path, relative_path) -> caption``.

    Discovery calls it for every image on every start.  With file-name captions
    and nothing to finish (no instance prompt, filters or prefix removal) it
    is :func:`caption_from_filename` itself, which reads only the name: the
    relative path will do for ``image_path``.
    """
    plain = not (dataset.instance_prompt or dataset.caption_filters or dataset.remove_common_llm_caption_prefixes)
    if dataset.caption_strategy == "filename" and plain:
        return lambda image_path, relative_path: caption_from_filename(image_path)
    return lambda image_path, relative_path: caption_for(image_path, dataset, table, relative_path, storage)


def raw_caption(
    image_path: str,
    dataset: DatasetConfig,
    table: Optional[MetadataTable] = None,
    relative_path: Optional[str] = None,
    storage: Optional["Storage"] = None,
) -> str:
    strategy = dataset.caption_strategy
    if dataset.only_instance_prompt and dataset.instance_prompt:
        return dataset.instance_prompt  # the file's own caption would be thrown away anyway
    if strategy == "textfile":
        return caption_from_textfile(image_path, storage)
    if strategy == "filename":
        return caption_from_filename(image_path)
    if strategy == "instanceprompt":
        if not dataset.instance_prompt:
            raise NoCaption(REASON_NO_CAPTION)
        return dataset.instance_prompt
    if strategy == "parquet":
        if table is None:
            raise ValueError("caption_strategy parquet needs the dataset's table")
        row = table.row_for(relative_path or os.path.basename(image_path))
        if row is None:
            raise NoCaption(REASON_NOT_IN_TABLE)
        if not row.caption:
            raise NoCaption(REASON_NO_CAPTION)
        return row.caption
    raise ValueError(f"caption_strategy {strategy!r} is not implemented")  # schema rejects it first


def finish_caption(caption: str, dataset: DatasetConfig) -> str:
    """Apply the dataset's clean-up and instance prompt settings to a raw caption."""
    prompt = dataset.instance_prompt
    if dataset.only_instance_prompt and prompt:
        return prompt
    is_prompt = dataset.caption_strategy == "instanceprompt"
    if not is_prompt:
        if dataset.remove_common_llm_caption_prefixes:
            caption = strip_llm_prefix(caption)
        if dataset.caption_filters:
            caption = apply_filters(caption, dataset.caption_filters)
            if not caption:
                raise NoCaption(REASON_FILTERED_EMPTY)
    if dataset.prepend_instance_prompt and prompt and not is_prompt:
        caption = f"{prompt} {caption}"
    return caption


def caption_from_textfile(image_path: str, storage: Optional["Storage"] = None) -> str:
    """Text of the ``.txt`` file with the image's stem, UTF-8 (a BOM is allowed), stripped.

    A missing or unreadable file raises NoCaption("no caption"), a blank one
    NoCaption("empty caption"), and one that is not UTF-8 NoCaption("caption
    not UTF-8"), so the user learns to re-save it instead of training on
    mojibake.  With ``storage`` the caption is the object beside the image's
    key, read with one request.
    """
    text_path = os.path.splitext(image_path)[0] + ".txt"
    if storage is not None:
        try:
            data = storage.read_head(text_path, _READ_LIMIT)[0]
        except OSError:  # FileNotFoundError: no caption object
            raise NoCaption(REASON_NO_CAPTION) from None
        return _caption_text(data)
    try:
        fd = os.open(text_path, _OPEN_FLAGS)
    except OSError:
        raise NoCaption(REASON_NO_CAPTION) from None
    try:
        data = os.read(fd, 8192)  # a small first read: a large one costs a large allocation
        while len(data) < _READ_LIMIT:
            more = os.read(fd, 65536)
            if not more:
                break
            data += more
    except OSError:  # a folder named like a caption file, or an I/O error
        raise NoCaption(REASON_NO_CAPTION) from None
    finally:
        os.close(fd)
    return _caption_text(data)


def _caption_text(data: bytes) -> str:
    if data.startswith(_BOM):
        data = data[3:]
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise NoCaption(REASON_CAPTION_NOT_UTF8) from None
    if not text:
        raise NoCaption(REASON_EMPTY_CAPTION)
    return text


def caption_from_filename(image_path: str) -> str:
    """A caption made from the file name.

    Rules, applied to the stem (name without folder and extension):
    ``_`` and ``-`` become spaces, whitespace collapses, and trailing
    space-separated runs of digits are dropped ("photo_of_a_cat_0042" ->
    "photo of a cat") because they are counters, not content.  If nothing is
    left (a name like "0042"), the stem with separators replaced is used.
    Hex-looking ids are kept: "cafe" or "bead" are real words.
    """
    name = image_path[max(image_path.rfind("/"), image_path.rfind(os.sep)) + 1:]  # os.path.basename, faster
    dot = name.rfind(".")
    stem = name[:dot] if dot > 0 and name[:dot].strip(".") else name  # os.path.splitext: leading dots stay
    if not stem.isascii():
        stem = os.fsencode(stem).decode("utf-8", "replace")  # a name that is not UTF-8 cannot be a caption as is
    # str methods, not regular expressions: this runs once per image on every start.  str.split()
    # splits on exactly what \s matches, and str.isdecimal() is what \d matches.
    words = stem.replace("_", " ").replace("-", " ").split()
    while len(words) > 1 and words[-1].isdecimal():  # a run of trailing counters, never the first word
        words.pop()
    return " ".join(words) or stem
