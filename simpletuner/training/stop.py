"""SIGINT and SIGTERM: the first one keeps the work, a second one stops at once.

While the training loop runs, the first signal only sets a flag: the loop
finishes its optimizer step, writes a checkpoint and ends the run with
:class:`RunStopped` (exit code 128 + signal: 130 for SIGINT, 143 for
SIGTERM).  Before the loop (loading, caching) there is no checkpoint to
write, so the first signal raises :class:`StoppedAtOnce` straight away; cache
entries are written atomically, so the ones finished are kept.

A second signal raises :class:`StoppedAtOnce` wherever the run is.  The same
signal arriving again within :data:`DUPLICATE_WINDOW_S` counts as one: when a
machine shuts down, every process gets SIGTERM and the launcher forwards its
own copy to the training processes as well.

With several processes the ranks may see a signal one step apart, so
:meth:`StopSignals.agreed` combines every rank's flag each step; all of them
stop after the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW_S = 1.0


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StoppedAtOnce(BaseException):
    """A signal ended the run where it was.  A BaseException, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int, phase: str) -> None:
        super().__init__(f"{signal_name(signum)} during {phase}")
        self.signum, self.phase = signum, phase


class RunStopped(BaseException):
    """The loop stopped after a signal, with a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"{signal_name(signum)} after step {step}")
        self.signum, self.step = signum, step


class StopSignals:
    """Owns the SIGINT/SIGTERM handlers for one run (a context manager)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.phase = "start-up"
        self.deferring = False  # True while the loop can stop at a step boundary
        self.requested: Optional[int] = None
        self._requested_at = 0.0
        self._previous: dict[int, Any] = {}
        # One rank speaks for the run; the others note it in debug.log.
        self._level = logging.WARNING if os.environ.get("RANK", "0") == "0" else logging.DEBUG

    def __enter__(self) -> "StopSignals":
        # Python runs handlers in the main thread only; elsewhere (a test
        # harness thread) the defaults stay.
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def enter(self, phase: str, deferring: bool = False) -> None:
        """Name what the run is doing now, for the line printed if it is stopped."""
        self.phase, self.deferring = phase, deferring

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested is not None:
            if signum == self.requested and self.clock() - self._requested_at < DUPLICATE_WINDOW_S:
                return
            raise StoppedAtOnce(signum, self.phase)
        if not self.deferring:
            raise StoppedAtOnce(signum, self.phase)
        self.requested, self._requested_at = signum, self.clock()
        logger.log(
            self._level, "%s received: finishing this step, then saving a checkpoint (send it again to stop at once)",
            signal_name(signum),
        )

    def agreed(self, accelerator: Any) -> Optional[int]:
        """The signal every rank agrees to stop for, or None; call on every rank after each step."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        # One small collective per step; it never touches the model, so the
        # training itself stays bitwise the same.
        flag = torch.tensor([self.requested or 0], dtype=torch.int64, device=accelerator.device)
        agreed = int(accelerator.reduce(flag, reduction="max").item())
        return agreed or None
