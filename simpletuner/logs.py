"""Logging set-up: one readable console format, level from SIMPLETUNER_LOG_LEVEL.

Third-party libraries that print import-time noise on CPU machines (torchao
and bitsandbytes warn about missing CUDA kernels) are quietened here so the
user sees our messages, not theirs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Optional

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


def setup_logging(env: Mapping[str, str], secrets: Iterable[str] = (), log_file: Optional[Path] = None) -> None:
    level_name = env.get("SIMPLETUNER_LOG_LEVEL", "INFO").upper()
    level = getattr(logging, level_name, logging.INFO)
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handlers = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    secret_filter = SecretFilter(secrets)
    for h in handlers:
        h.addFilter(secret_filter)
        root.addHandler(h)
    root.setLevel(logging.WARNING)
    logging.getLogger("simpletuner").setLevel(level)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torchao")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
