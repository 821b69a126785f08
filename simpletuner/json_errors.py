"""Where a JSON syntax error really is, in words a person editing the file can act on.

Python's parser reports the character where it gave up, which for the two
commonest slips is on the line *after* the mistake: a trailing comma is
reported at the closing ``]``/``}`` that follows it, and a missing comma at
the start of the next value.  :func:`describe_json_error` points at the
comma (or the place a comma is missing) instead.
"""

from __future__ import annotations

import json


def _position(doc: str, pos: int) -> tuple[int, int]:
    """1-based (line, column) of offset ``pos``."""
    line = doc.count("\n", 0, pos) + 1
    return line, pos - (doc.rfind("\n", 0, pos) + 1) + 1


def _previous_non_space(doc: str, pos: int) -> int:
    index = pos - 1
    while index >= 0 and doc[index] in " \t\r\n":
        index -= 1
    return index


def describe_json_error(error: json.JSONDecodeError) -> str:
    """"line L, column C: what is wrong", L and C pointing at the mistake itself."""
    doc, pos = error.doc, error.pos
    before = _previous_non_space(doc, pos)
    if pos < len(doc) and doc[pos] in "]}" and before >= 0 and doc[before] == ",":
        line, column = _position(doc, before)
        closing = "list" if doc[pos] == "]" else "object"
        return f"line {line}, column {column}: trailing comma after the last item of a {closing}; remove it"
    if error.msg == "Expecting ',' delimiter" and before >= 0:
        line, column = _position(doc, before + 1)
        return f"line {line}, column {column}: missing ',' between two items"
    return f"line {error.lineno}, column {error.colno}: {error.msg}"
