"""Exceptions meant for people.

A :class:`UserError` is a mistake the user can fix (a bad option, a missing
file, an empty dataset).  Entry points print its message on one line and exit
with code 2, without a traceback.  Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the user's input; the message says what to do."""


class ConfigError(UserError):
    """An option or config file is wrong."""


class DataError(UserError):
    """A dataset cannot be used as configured."""


class ModelError(UserError):
    """A model path or component cannot be loaded as configured."""
