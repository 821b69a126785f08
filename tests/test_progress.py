"""The training progress reporter: when lines are logged, and what the bar's loss is.

The end-to-end check (lines on a redirected console and in debug.log) is in
test_stop_signals.py; these drive TrainingProgress with a fake clock.
"""

from __future__ import annotations

import logging

import pytest

from simpletuner.training.progress import LINE_EVERY_S, SmoothedLoss, TrainingProgress, show_bar


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _steps_logged(caplog: pytest.LogCaptureFixture, level: int) -> list[int]:
    return [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records
            if r.name == "simpletuner.training.progress" and r.levelno == level]


def test_slow_steps_still_give_a_line_every_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    progress = TrainingProgress(1000, 0, bar=False, samples_per_step=4, clock=clock)
    caplog.set_level(logging.DEBUG, logger="simpletuner")
    for step in range(1, 8):
        clock.now += LINE_EVERY_S * 0.6  # 36 s a step: far fewer than 10 steps a minute
        progress.step(step, loss=1.0, lr=1e-4)
    # The first step, then whenever a minute has passed since the last line.
    assert _steps_logged(caplog, logging.INFO) == [1, 3, 5, 7]
    line = caplog.records[-1].getMessage()
    assert line == "step 7/1000 (1%)  loss 1.0000  lr 1.00e-04  36.00 s/step  0.11 samples/s  ETA 9h55m"
    progress.close()


def test_fast_steps_give_a_line_every_ten_steps(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    progress = TrainingProgress(25, 0, bar=False, samples_per_step=2, clock=clock)
    caplog.set_level(logging.DEBUG, logger="simpletuner")
    for step in range(1, 26):
        clock.now += 0.5
        progress.step(step, loss=1.0, lr=1e-4)
    assert _steps_logged(caplog, logging.INFO) == [1, 10, 20, 25]
    progress.close()


def test_with_the_bar_drawn_the_lines_go_to_debug_log_only(caplog: pytest.LogCaptureFixture) -> None:
    progress = TrainingProgress(12, 0, bar=True, samples_per_step=2, clock=_Clock())
    caplog.set_level(logging.DEBUG, logger="simpletuner")
    for step in range(1, 13):
        progress.step(step, loss=1.0, lr=1e-4)
    assert _steps_logged(caplog, logging.INFO) == []
    assert _steps_logged(caplog, logging.DEBUG) == [1, 10, 12]  # the console shows INFO; debug.log DEBUG
    progress.close()


def test_other_ranks_report_nothing(caplog: pytest.LogCaptureFixture) -> None:
    progress = TrainingProgress(12, 0, bar=False, samples_per_step=2, report=False, clock=_Clock())
    caplog.set_level(logging.DEBUG, logger="simpletuner")
    for step in range(1, 13):
        progress.step(step, loss=1.0, lr=1e-4)
    assert _steps_logged(caplog, logging.INFO) == _steps_logged(caplog, logging.DEBUG) == []


def test_the_bar_shows_a_smoothed_loss_not_a_regularisation_steps_zero() -> None:
    progress = TrainingProgress(12, 0, bar=True, samples_per_step=2, clock=_Clock())
    for step, loss in enumerate([0.8, 0.9, 0.0], start=1):  # step 3: regularisation data, loss ~0
        progress.step(step, loss=loss, lr=1e-4)
    shown = float(progress._bar.postfix.split("loss=")[1].split(",")[0])
    assert 0.5 < shown < 0.8
    progress.close()


def test_smoothing_starts_at_the_first_value() -> None:
    smoothed = SmoothedLoss()
    assert smoothed.add(2.0) == pytest.approx(2.0)  # bias-corrected: not pulled toward 0
    assert smoothed.add(0.0) == pytest.approx(2.0 * 0.09 / 0.19)  # weights 0.9 x 0.1 and 0.1, normalised


@pytest.mark.parametrize(("mode", "terminal", "bar"), [
    ("auto", True, True), ("auto", False, False), ("bar", False, True), ("lines", True, False),
])
def test_simpletuner_progress_chooses_bar_or_lines(mode: str, terminal: bool, bar: bool) -> None:
    assert show_bar(mode, terminal) is bar
