"""Learning-rate schedules reach the values their definitions promise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from simpletuner.training.schedulers import build_lr_scheduler, effective_scheduler_name, scaled_learning_rate

LR = 1e-3
TOTAL = 100


def _config(**values):
    base = dict(optimizer="adamw_bf16", lr_scheduler="constant", lr_warmup_steps=0, lr_num_cycles=1,
                lr_end=4e-7, lr_power=1.0, lr_scale=False, learning_rate=LR, train_batch_size=4,
                gradient_accumulation_steps=2)
    return SimpleNamespace(**{**base, **values})


def _rates(config, total: int = TOTAL) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = build_lr_scheduler(optimizer, config, total)
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    rates.append(scheduler.get_last_lr()[0])
    return rates


def test_polynomial_arrives_at_lr_end() -> None:
    rates = _rates(_config(lr_scheduler="polynomial", lr_end=1e-5, lr_power=2.0, lr_warmup_steps=10))
    assert rates[5] == pytest.approx(LR * 5 / 10)
    assert rates[10] == pytest.approx(LR)
    assert rates[-1] == pytest.approx(1e-5)
    # power 2: halfway through the decay, (1 - 0.5)^2 of the way from lr_end to lr
    assert rates[55] == pytest.approx(1e-5 + (LR - 1e-5) * 0.25)


def test_linear_decays_to_zero_and_cosine_halves_midway() -> None:
    assert _rates(_config(lr_scheduler="linear"))[-1] == pytest.approx(0.0, abs=1e-12)
    assert _rates(_config(lr_scheduler="cosine"))[TOTAL // 2] == pytest.approx(LR / 2)


def test_cosine_with_restarts_restarts_each_cycle() -> None:
    rates = _rates(_config(lr_scheduler="cosine_with_restarts", lr_num_cycles=2))
    assert rates[49] < 0.01 * LR and rates[50] == pytest.approx(LR)


def test_constant_with_warmup_ramps_then_holds() -> None:
    rates = _rates(_config(lr_scheduler="constant_with_warmup", lr_warmup_steps=4))
    assert rates[:5] == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4, LR])
    assert rates[5:] == pytest.approx([LR] * len(rates[5:]))


def test_constant_with_warmup_steps_warms_up_instead_of_ignoring_them() -> None:
    assert effective_scheduler_name(_config(lr_warmup_steps=3)) == "constant_with_warmup"
    assert _rates(_config(lr_warmup_steps=4))[2] == pytest.approx(LR / 2)


def test_schedule_free_optimizers_get_a_constant_schedule() -> None:
    config = _config(optimizer="adamw_schedulefree", lr_scheduler="constant", lr_warmup_steps=10)
    assert effective_scheduler_name(config) == "constant"
    assert _rates(config) == pytest.approx([LR] * (TOTAL + 1))  # the optimizer does its own warm-up


def test_lr_scale_multiplies_by_the_effective_batch() -> None:
    assert scaled_learning_rate(_config(), num_processes=3) == LR
    assert scaled_learning_rate(_config(lr_scale=True), num_processes=3) == pytest.approx(LR * 4 * 2 * 3)
