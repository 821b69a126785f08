"""Uploads in the background, so training never waits for the network.

One worker thread takes jobs in the order they were given (checkpoints as
they are written, then the final push), retries a failed job after each of
``retry_delays`` seconds, and records the jobs that still failed.  Uploads
only read local files: a failure never touches them.  ``wait()`` blocks until
every job is done and returns the failures, for the run to report.

``SIMPLETUNER_PUBLISH_RETRY_SECONDS`` (comma-separated seconds, default
``10,60,300``) sets the pauses between attempts.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from simpletuner.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = (10.0, 60.0, 300.0)
RETRY_VARIABLE = "SIMPLETUNER_PUBLISH_RETRY_SECONDS"


@dataclass(frozen=True)
class UploadFailure:
    what: str
    reason: str


def retry_delays(env: Optional[Mapping[str, str]] = None) -> tuple[float, ...]:
    env = os.environ if env is None else env
    raw = env.get(RETRY_VARIABLE)
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_SECONDS
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{RETRY_VARIABLE}={raw!r}: expected seconds separated by commas, e.g. 10,60,300") from None
    if any(delay < 0 for delay in delays):
        raise ConfigError(f"{RETRY_VARIABLE}={raw!r}: seconds cannot be negative")
    return delays


class BackgroundUploads:
    """A queue of upload jobs run one at a time on a worker thread, with retries."""

    def __init__(self, delays: Sequence[float], describe_error: Callable[[BaseException], str]) -> None:
        self.delays = tuple(delays)
        self.describe_error = describe_error
        self.failures: list[UploadFailure] = []
        self.done: list[str] = []
        self._jobs: "queue.Queue[Optional[tuple[str, Callable[[], Any]]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def submit(self, what: str, job: Callable[[], Any]) -> None:
        """Run ``job()`` in the background; ``what`` names it in messages ("checkpoint-100")."""
        if self._thread is None:
            # A daemon thread: a crash elsewhere must not leave the process hanging on the network.
            self._thread = threading.Thread(target=self._work, name="hub-uploads", daemon=True)
            self._thread.start()
        self._jobs.put((what, job))

    def wait(self) -> list[UploadFailure]:
        """Block until every submitted job has succeeded or failed for good; return the failures."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        return list(self.failures)

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            what, job = item
            self._attempt(what, job)

    def _attempt(self, what: str, job: Callable[[], Any]) -> None:
        for attempt in range(len(self.delays) + 1):
            started = time.monotonic()
            try:
                job()
            except Exception as error:
                reason = self.describe_error(error)
                if attempt == len(self.delays):
                    logger.warning("uploading %s failed after %d attempts: %s", what, attempt + 1, reason)
                    self.failures.append(UploadFailure(what, reason))
                    return
                delay = self.delays[attempt]
                logger.warning("uploading %s failed (%s); trying again in %gs", what, reason, delay)
                logger.debug("upload failure", exc_info=error)
                time.sleep(delay)
                continue
            logger.info("uploaded %s in %.1fs", what, time.monotonic() - started)
            self.done.append(what)
            return
