"""What the training loop shows: a bar on a terminal, progress lines anywhere else.

Without a terminal (``train.sh > log 2>&1``, nohup, a cluster job) a bar is
not drawn, so a line is logged every :func:`line_interval` steps and at least
every :data:`LINE_EVERY_S` seconds: step/total, smoothed loss, learning rate,
seconds per step, samples per second and the time left.  The same lines
always reach debug.log, also while the bar is drawn.

The loss shown is smoothed (an exponential moving average, corrected for its
start like tqdm's): one step's loss jumps with its timestep, and a
regularisation step's loss against the base model is near zero.
``SIMPLETUNER_PROGRESS`` (auto, bar, lines) overrides the choice; see
documentation/CONSOLE.md.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LINE_EVERY_S = 60.0
SMOOTHING = 0.9  # weight of the history in the smoothed loss


def show_bar(mode: str, is_terminal: bool) -> bool:
    """Whether to draw bars, for SIMPLETUNER_PROGRESS ``mode`` (auto, bar, lines)."""
    return mode == "bar" or (mode == "auto" and is_terminal)


def line_interval(total_steps: int) -> int:
    """Steps between progress lines: 10, or more for long runs (about 100 lines per run)."""
    return max(10, total_steps // 100)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class SmoothedLoss:
    """Exponential moving average with bias correction (the first value is not pulled to 0)."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self._average = 0.0
        self._weight = 0.0

    def add(self, value: float) -> float:
        self._average = self.smoothing * self._average + (1 - self.smoothing) * value
        self._weight = self.smoothing * self._weight + (1 - self.smoothing)
        return self.value

    @property
    def value(self) -> float:
        return self._average / self._weight if self._weight else float("nan")


class TrainingProgress:
    """Call :meth:`step` after every optimizer step and :meth:`close` after the loop."""

    def __init__(
        self, total_steps: int, first_step: int, bar: bool, samples_per_step: int,
        report: bool = True, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``bar``: draw a bar (lines then go to debug.log only); ``report``: False on all but one rank."""
        self.total_steps = total_steps
        self.bar = bar
        self.report = report
        self.samples_per_step = samples_per_step
        self.every = line_interval(total_steps)
        self.clock = clock
        self.loss = SmoothedLoss()
        self._bar = tqdm(total=total_steps, initial=first_step, desc="Training", unit="step",
                         disable=not (bar and report))
        self._last_line_at = clock()
        self._last_line_step = first_step
        self._seconds_per_step = 0.0
        self._logged_a_line = False

    def step(self, step: int, loss: float, lr: float) -> None:
        smoothed = self.loss.add(loss)
        self._bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.2e}")
        self._bar.update(1)
        if not self.report:
            return
        now = self.clock()
        due = step % self.every == 0 or now - self._last_line_at >= LINE_EVERY_S
        # The first step says the loop has started; the last one how it ended.
        if not (due or not self._logged_a_line or step == self.total_steps):
            return
        self._seconds_per_step = (now - self._last_line_at) / max(1, step - self._last_line_step)
        self._last_line_at, self._last_line_step, self._logged_a_line = now, step, True
        logger.log(logging.DEBUG if self.bar else logging.INFO, self.line(step, smoothed, lr))

    def line(self, step: int, smoothed: float, lr: float) -> str:
        per_step = self._seconds_per_step
        samples = self.samples_per_step / per_step if per_step > 0 else 0.0
        left = format_duration(per_step * (self.total_steps - step))
        return (
            f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%)  loss {smoothed:.4f}  "
            f"lr {lr:.2e}  {per_step:.2f} s/step  {samples:.2f} samples/s  ETA {left}"
        )

    def close(self) -> None:
        self._bar.close()
