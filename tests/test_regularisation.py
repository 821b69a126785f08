"""is_regularisation_data: adapter runs train those samples toward the base model's own prediction."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from adapter_harness import (
    fresh_denoiser,
    output,
    train,
    trained_denoiser,
    write_lycoris_config,
    write_mixed_project,
    write_project,
)
from simpletuner.errors import DataError
from simpletuner.training.regularisation import mix_targets, regularisation_mask

LOKR = {"algo": "lokr", "linear_dim": 4, "linear_alpha": 1, "factor": 4,
        "apply_preset": {"target_module": ["Attention"]}}
COMMON = ("--learning_rate", "1e-2", "--train_batch_size", "2", "--lora_rank", "4")


def _adapter_flags(adapter: str, root: Path) -> tuple[str, ...]:
    if adapter == "lycoris":
        return ("--lora_type", "lycoris", "--lycoris_config", str(write_lycoris_config(root, LOKR)),
                "--learning_rate", "1e-2", "--train_batch_size", "2")
    init = () if adapter == "lora" else ("--lora_init_type", adapter)
    return (*COMMON, *init)


class _Sample:
    def __init__(self, flag: bool) -> None:
        self.is_regularisation = flag


def test_targets_are_mixed_per_sample() -> None:
    assert regularisation_mask([_Sample(False), _Sample(False)]) is None
    mask = regularisation_mask([_Sample(True), _Sample(False)])
    base, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    mixed = mix_targets(mask, base, target)
    assert torch.equal(mixed[0], base[0]) and torch.equal(mixed[1], target[1])
    assert torch.equal(mix_targets(regularisation_mask([_Sample(True)] * 2), base, target), base)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "pissa", "lycoris"])
def test_regularisation_target_is_the_base_models_prediction(tmp_path: Path, tiny_sdxl: Path, adapter: str) -> None:
    project = write_mixed_project(tmp_path)
    trainer, recorded = train(project, tiny_sdxl, "sdxl", *_adapter_flags(adapter, tmp_path),
                              "--max_train_steps", "6", record=True)
    flags = recorded.regularisation
    first_ordinary = flags.index(False)
    later_regularisation = [i for i, flag in enumerate(flags) if flag and i > first_ordinary]
    assert later_regularisation, f"no regularisation batch after the adapter had trained: {flags}"
    base = fresh_denoiser(trainer)
    for i, flag in enumerate(flags):
        base_prediction = output(base, recorded.inputs[i])
        if flag:
            assert torch.allclose(recorded.targets[i], base_prediction, atol=1e-5), i
        else:
            assert not torch.allclose(recorded.targets[i], base_prediction, atol=1e-2), i
    # The adapter moved the model away from the base, so "the base model" had
    # to be asked for with the adapter really switched off.
    last = recorded.inputs[later_regularisation[-1]]
    assert not torch.allclose(output(trained_denoiser(trainer), last), output(base, last), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "lycoris"])
def test_regularisation_data_alone_is_refused_for_an_adapter(tmp_path: Path, tiny_sdxl: Path, adapter: str) -> None:
    # Every target would be the model's own starting output: the adapter would learn nothing.
    regularisation = write_project(tmp_path / "regularisation", regularisation=True)
    flags = (*_adapter_flags(adapter, tmp_path), "--max_train_steps", "3")
    with pytest.raises(DataError, match="nothing to learn: only regularisation data remains"):
        train(regularisation, tiny_sdxl, "sdxl", *flags)


@pytest.mark.slow
def test_a_full_fine_tune_trains_regularisation_data_as_ordinary_data_and_says_so(
    tmp_path: Path, tiny_sdxl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project = write_project(tmp_path, regularisation=True)
    with caplog.at_level(logging.WARNING, logger="simpletuner"):
        trainer, recorded = train(project, tiny_sdxl, "sdxl", "--model_type", "full", "--max_train_steps", "2",
                                  "--learning_rate", "1e-3", "--train_batch_size", "2", record=True)
    assert any("regularisation dataset(s) classes" in r.getMessage() and "ordinary data" in r.getMessage()
               for r in caplog.records)
    inputs = recorded.inputs[-1]
    assert not torch.allclose(recorded.targets[-1], output(fresh_denoiser(trainer), inputs), atol=1e-2)
    assert not torch.allclose(output(trained_denoiser(trainer), inputs), output(fresh_denoiser(trainer), inputs),
                              atol=1e-4)
