"""Logging set-up: one readable console format, level from SIMPLETUNER_LOG_LEVEL.

Third-party libraries that print import-time noise on CPU machines (torchao
and bitsandbytes warn about missing CUDA kernels) are quietened here so the
user sees our messages, not theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

_NOISY_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree", "torch._dynamo", "diffusers", "transformers")


class SecretFilter(logging.Filter):
    """Masks known secret values in every record, whatever logged them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***redacted***")
            record.msg, record.args = message, None
        return True


def setup_logging(env: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
    level_name = env.get("SIMPLETUNER_LOG_LEVEL", "INFO").upper()
    level = getattr(logging, level_name, logging.INFO)
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    handler.addFilter(SecretFilter(secrets))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # The console shows SIMPLETUNER_LOG_LEVEL and up; debug.log gets everything.
    logging.getLogger("simpletuner").setLevel(logging.DEBUG)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torchao")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def attach_log_file(path: Path) -> None:
    """Also write every simpletuner record (DEBUG and up) to ``path``.

    Added once the run is known to start, so a rejected config writes nothing.
    The console handler's secret filter is reused.
    """
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for handler in root.handlers:
        for existing in handler.filters:
            file_handler.addFilter(existing)
    root.addHandler(file_handler)


def quiet_libraries() -> None:
    """Silence diffusers/transformers chatter (weight-loading bars, hints).

    Call after torch is imported: torch configures its own loggers at import
    and would undo an earlier setting.
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def log_file_path() -> Optional[Path]:
    """The debug.log :func:`attach_log_file` added, or None before the run started."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


@contextlib.contextmanager
def quieted(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` (and its children) while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
