"""Exceptions meant for people.

A :class:`UserError` is a mistake the user can fix (a bad option, a missing
file, an empty dataset).  Entry points print its message on one line and exit
with code 2, without a traceback.  Anything else is a bug and keeps its
traceback.

An :class:`OutputWriteError` (a checkpoint or the final weights could not be
written: disk full, quota, permissions) exits with code 3, so scripts can tell
"make room and resume" apart from "fix the config".  documentation/EXIT_CODES.md
lists every code.
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2
OUTPUT_WRITE_EXIT_CODE = 3


class UserError(Exception):
    """A mistake in the user's input; the message says what to do."""


class ConfigError(UserError):
    """An option or config file is wrong."""


class DataError(UserError):
    """A dataset cannot be used as configured."""


class ModelError(UserError):
    """A model path or component cannot be loaded as configured."""


class OutputWriteError(Exception):
    """Training output could not be written; the message says what survived and how to continue."""


PUBLISH_FAILED_EXIT_CODE = 4


class PublishError(Exception):
    """Training finished but publishing did not; the message names what failed, why, and the retry command."""


LOST_CONTACT_EXIT_CODE = 5  # another process of a multi-process run failed; this one could not go on
