"""Validation with Flux's real CFG leaves training bitwise unchanged, and a failing
validation (SDXL and Flux) is one error line, a tracker record, and training goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from family_harness import train_in_process, write_two_class_project
from wandb_offline import read_offline_run

pytestmark = pytest.mark.slow

TRAINING = ("--max_train_steps", "2", "--lora_rank", "4", "--lora_dropout", "0.1", "--learning_rate", "1e-3")
VALIDATION = ("--validation_prompt", "a red square", "--validation_steps", "1", "--validation_resolution", "32",
              "--validation_num_inference_steps", "2")


def test_flux_true_cfg_validation_does_not_change_training(tmp_path: Path, tiny_flux: Path) -> None:
    root = write_two_class_project(tmp_path, size=32, per_class=2)
    validated = train_in_process(root, tiny_flux, "flux", *TRAINING, *VALIDATION, "--validation_guidance_real", "2.0",
                                 "--validation_no_cfg_until_timestep", "1", "--validation_disable_unconditional")
    plain = train_in_process(root, tiny_flux, "flux", *TRAINING, output_name="plain")
    assert sorted(p.name for p in (validated / "validation_images").iterdir()) == [
        "step_000000", "step_000001", "step_000002"]
    expected = load_file(plain / "pytorch_lora_weights.safetensors")
    actual = load_file(validated / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_failing_validation_is_one_line_and_training_continues(
    family: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from simpletuner.families.registry import get_family

    model = request.getfixturevalue(f"tiny_{family}")
    pipeline_class = get_family(family).pipeline_class()
    stock_call = pipeline_class.__call__
    calls = []

    def first_call_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected pipeline fault")
        return stock_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", first_call_fails)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = write_two_class_project(tmp_path, size=32, per_class=2)
    with caplog.at_level(logging.DEBUG, logger="simpletuner"):  # as setup_logging leaves it
        output = train_in_process(root, model, family, *TRAINING, *VALIDATION, "--disable_benchmark",
                                  "--report_to", "tensorboard,wandb")

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "validation at step 1 failed" in message and "RuntimeError: injected pipeline fault" in message
    assert "debug.log" in message and "\n" not in message
    debug_log = (output / "debug.log").read_text(encoding="utf-8")
    assert "Traceback" in debug_log and "injected pipeline fault" in debug_log
    # Training went on: the next validation worked (the unconditional row too) and the weights were saved.
    assert sorted(p.name for p in (output / "validation_images").iterdir()) == ["step_000002"]
    shortnames = {e["shortname"] for e in json.loads(
        (output / "validation_images" / "step_000002" / "manifest.json").read_text())["images"]}
    assert shortnames == {"validation", "unconditional"}
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    accumulator = EventAccumulator(str(next((output / "logs").rglob("events.out.tfevents*")).parent))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("validation/failed")] == [(1, 1.0)]
    assert [e.step for e in accumulator.Scalars("validation/duration_s")] == [2]
    # wandb (gallery layout, the default): the failure record, then a panel per prompt and the grid.
    history = read_offline_run(next((output / "logs").rglob("run-*.wandb")))["history"]
    failed = [h for h in history if "validation/failed" in h]
    assert [(h["_step"], h["validation/error"]) for h in failed] == [(1, "RuntimeError: injected pipeline fault")]
    panels = [h for h in history if h.get("validation/validation/_type") == "images/separated"]
    assert [(h["_step"], h["validation/validation/count"]) for h in panels] == [(2, 1)]
    assert panels[0]["validation/unconditional/count"] == 1 and panels[0]["validation/grid/count"] == 1
