"""Caption clean-up: filter lists and the openings captioning models like to add.

A filter list is a text file with one filter per line (``#`` starts a comment
line; blank lines are ignored; nothing else is stripped, so a trailing space
is part of the filter), a JSON file holding a list of strings, or such a list
written inline in multidatabackend.json.  Each filter is one of:

* ``s/search/replace/`` (optionally followed by ``g`` for every match and
  ``i`` to ignore case): the regex ``search`` becomes ``replace``; without
  ``g`` only the first match is replaced, as ``sed`` does.  ``\\/`` is a
  literal slash inside either part.
* anything else is removed wherever it occurs, first as the literal text and
  then, when the line is a valid regular expression containing regex syntax,
  every match of it.  ``trending on artstation`` and ``^an? photo of`` both
  work as one would expect.

After the filters, runs of whitespace become one space and the ends are
trimmed.  Lines are checked when the config is loaded, so a broken regex is
reported up front with the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from simpletuner.errors import ConfigError

_SED = re.compile(r"^s/((?:[^/\\]|\\.)*)/((?:[^/\\]|\\.)*)/([gi]*)$")
_REGEX_SYNTAX = re.compile(r"[\\^$.|?*+()\[\]{}]")
_WHITESPACE = re.compile(r"\s+")

# Openings that vision-language captioners put before the description itself
# (the list behind finetrainers' remove_common_llm_caption_prefixes, widened to
# photos and illustrations).  Matched case-insensitively at the start, longest
# first, with an optional ":" or "," after; only the opening is removed.
_SUBJECTS = ("this video", "the video", "this clip", "the clip", "this animation", "the animation",
             "this image", "the image", "this picture", "the picture", "this photo", "the photo",
             "this photograph", "the photograph", "this illustration", "the illustration")
_VERBS = ("shows", "depicts", "features", "captures", "highlights", "introduces", "presents",
          "showcases", "portrays", "displays", "illustrates")
_OPENERS = ("in the video", "in this video", "in this video clip", "in the clip", "in the image",
            "in this image", "caption")
COMMON_LLM_CAPTION_PREFIXES: Tuple[str, ...] = tuple(sorted(
    {f"{subject} {verb}" for subject in _SUBJECTS for verb in _VERBS} | set(_OPENERS),
    key=lambda text: (-len(text), text),
))
_PREFIX = re.compile(
    r"^\s*(?:" + "|".join(re.escape(p) for p in COMMON_LLM_CAPTION_PREFIXES) + r")\b\s*[:,]?\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CaptionFilter:
    """One line of a filter list, ready to apply."""

    source: str  # the line as written, for messages
    literal: Optional[str] = None
    pattern: Optional[re.Pattern] = None
    replacement: str = ""
    count: int = 0  # re.sub count: 0 = every match

    def apply(self, caption: str) -> str:
        if self.literal is not None:
            caption = caption.replace(self.literal, "")
        if self.pattern is not None:
            caption = self.pattern.sub(self.replacement, caption, count=self.count)
        return caption


def parse_filter_line(line: str, where: str) -> CaptionFilter:
    """A filter from one line; raises ConfigError naming ``where`` for a broken regex."""
    sed = _SED.match(line)
    try:
        if sed:
            search, replace, flags = (part.replace("\\/", "/") for part in sed.groups())
            pattern = re.compile(search, re.IGNORECASE if "i" in flags else 0)
            replacement = _sed_replacement(replace)
            pattern.sub(replacement, "")  # a bad group reference fails here, not mid-run
            return CaptionFilter(line, pattern=pattern, replacement=replacement,
                                 count=0 if "g" in flags else 1)
        pattern = re.compile(line) if _REGEX_SYNTAX.search(line) else None
    except re.error as exc:
        raise ConfigError(f"{where}: filter {line!r} is not a valid regular expression ({exc})") from None
    return CaptionFilter(line, literal=line, pattern=pattern)


def _sed_replacement(text: str) -> str:
    r"""sed writes groups as \1 and & for the whole match; Python's re wants \1 and \g<0>."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(text[index : index + 2])
            index += 2
            continue
        out.append("\\g<0>" if char == "&" else char)
        index += 1
    return "".join(out)


def load_filter_list(value: object, where: str) -> Tuple[CaptionFilter, ...]:
    """Filters from a path (text or JSON file) or an inline list of strings."""
    if isinstance(value, (list, tuple)):
        lines, origin = [str(v) for v in value], f"{where}: key 'caption_filter_list'"
    else:
        path = str(value)
        origin = f"{where}: caption_filter_list {path}"
        try:
            with open(path, "r", encoding="utf-8-sig") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{where}: key 'caption_filter_list' = {path!r} cannot be read "
                f"({getattr(exc, 'strerror', None) or exc}); fix the path or save the file as UTF-8"
            ) from None
        lines = _json_lines(text, origin) if path.lower().endswith(".json") else text.splitlines()
    filters: List[CaptionFilter] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        filters.append(parse_filter_line(line.rstrip("\r\n"), f"{origin} line {number}"))
    return tuple(filters)


def _json_lines(text: str, origin: str) -> List[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise ConfigError(f"{origin}: a JSON filter list must be a list of strings")
    return data


def strip_llm_prefix(caption: str) -> str:
    """``caption`` without a leading "The image shows"-style opening, first letter kept as written."""
    return _PREFIX.sub("", caption, count=1)


def apply_filters(caption: str, filters: Iterable[CaptionFilter]) -> str:
    for caption_filter in filters:
        caption = caption_filter.apply(caption)
    return _WHITESPACE.sub(" ", caption).strip()
