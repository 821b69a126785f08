"""Captions for images, one function per ``caption_strategy``.

Captions are cheap to read, so discovery reads them again on every run
instead of caching them: editing a ``.txt`` file takes effect on the next
run with nothing to invalidate.  An image whose caption cannot be had is not
an error: :class:`NoCaption` carries the skip reason that discovery reports.
"""

from __future__ import annotations

import os
import re

from simpletuner.data.schema import DatasetConfig

REASON_NO_CAPTION = "no caption"
REASON_CAPTION_NOT_UTF8 = "caption not UTF-8"

_SEPARATORS = re.compile(r"[_\-]+")
_WHITESPACE = re.compile(r"\s+")
_TRAILING_NUMBER = re.compile(r"(?:\s+\d+)+$")


class NoCaption(Exception):
    """The image has no usable caption; ``reason`` is what the skip summary shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def caption_for(image_path: str, dataset: DatasetConfig) -> str:
    """The caption of ``image_path`` under ``dataset.caption_strategy``; raises NoCaption."""
    strategy = dataset.caption_strategy
    if strategy == "textfile":
        return caption_from_textfile(image_path)
    if strategy == "filename":
        return caption_from_filename(image_path)
    if strategy == "instanceprompt":
        if not dataset.instance_prompt:
            raise NoCaption(REASON_NO_CAPTION)
        return dataset.instance_prompt
    raise ValueError(f"caption_strategy {strategy!r} is not implemented")  # schema rejects it first


def caption_from_textfile(image_path: str) -> str:
    """Text of the ``.txt`` file with the image's stem, UTF-8 (a BOM is allowed), stripped.

    Missing, unreadable or blank files raise NoCaption("no caption"); files that
    are not UTF-8 raise NoCaption("caption not UTF-8") so the user learns to
    re-save them instead of training on mojibake.
    """
    text_path = os.path.splitext(image_path)[0] + ".txt"
    try:
        with open(text_path, "rb") as handle:
            data = handle.read()
    except OSError:
        raise NoCaption(REASON_NO_CAPTION) from None
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise NoCaption(REASON_CAPTION_NOT_UTF8) from None
    if not text:
        raise NoCaption(REASON_NO_CAPTION)
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
    stem = os.path.splitext(os.path.basename(image_path))[0]
    spaced = _WHITESPACE.sub(" ", _SEPARATORS.sub(" ", stem)).strip()
    cleaned = _TRAILING_NUMBER.sub("", spaced).strip()
    return cleaned or spaced or stem
