"""How many optimizer steps a run takes, from epochs or from max_train_steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from simpletuner.errors import DataError
from simpletuner.training.trainer import total_training_steps


def _config(**values):
    base = {"max_train_steps": 0, "num_train_epochs": 1, "gradient_accumulation_steps": 1}
    return SimpleNamespace(**{**base, **values})


def test_max_train_steps_wins_over_epochs() -> None:
    assert total_training_steps(_config(max_train_steps=7, num_train_epochs=50), batches_per_epoch=12) == 7
    # ...also when it asks for more than the epochs hold: the epoch count never ends a
    # run early, which is what --ignore_final_epochs asks for (so it is always the case).
    assert total_training_steps(_config(max_train_steps=100, num_train_epochs=1), batches_per_epoch=12) == 100
    assert total_training_steps(_config(max_train_steps=100, num_train_epochs=1, ignore_final_epochs=True),
                                batches_per_epoch=12) == 100


def test_epochs_times_batches_divided_by_accumulation() -> None:
    assert total_training_steps(_config(num_train_epochs=3), batches_per_epoch=12) == 36
    assert total_training_steps(_config(num_train_epochs=3, gradient_accumulation_steps=4), 12) == 9
    # a remainder of micro-batches too small for a whole step is not trained
    assert total_training_steps(_config(num_train_epochs=1, gradient_accumulation_steps=5), 12) == 2


def test_less_than_one_step_is_an_error() -> None:
    with pytest.raises(DataError, match="gradient_accumulation_steps=8"):
        total_training_steps(_config(num_train_epochs=1, gradient_accumulation_steps=8), batches_per_epoch=3)
