"""--use_ema: the average follows the decay rule, survives resume and is saved."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from family_harness import train_in_process, write_two_class_project
from simpletuner.training.ema import EmaWeights


def _config(**values):
    base = dict(ema_decay=0.9, ema_device="cpu", ema_cpu_only=False, ema_update_interval=None)
    return SimpleNamespace(**{**base, **values})


def test_average_follows_the_warmed_up_decay_rule() -> None:
    # Decay 0.5 binds from the 9th update on ((1+8)/(10+8) = 0.5), so 20 updates
    # show the configured decay itself, not only diffusers' warm-up.
    weight = torch.nn.Parameter(torch.zeros(3))
    ema = EmaWeights([weight], _config(ema_decay=0.5), torch.device("cpu"))
    expected = torch.zeros(3)
    capped_updates = 0
    for step in range(1, 21):
        with torch.no_grad():
            weight.add_(1.0)  # the live weight moves by 1 each step
        ema.after_optimizer_step(step)
        n = step - 1  # diffusers' EMAModel: decay of the n-th update is min(d, (1+n)/(10+n)), 0 at first
        warm_up = (1 + n) / (10 + n)
        decay = 0.0 if n <= 0 else min(0.5, warm_up)
        capped_updates += n > 0 and warm_up > 0.5
        expected = decay * expected + (1 - decay) * weight.detach()
        assert torch.allclose(ema.averaged()[0], expected), step
    assert capped_updates >= 10, "the configured decay never took over from the warm-up"
    # With decay 0.5 and a weight rising by 1 per step the average settles 1 behind it.
    assert torch.allclose(weight.detach() - ema.averaged()[0], torch.ones(3), atol=1e-3)


def test_update_interval_skips_steps_and_swap_restores_live_weights() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    ema = EmaWeights([weight], _config(ema_update_interval=3), torch.device("cpu"))
    for step in range(1, 7):
        ema.after_optimizer_step(step)
    assert ema.updates == 2  # steps 3 and 6
    with torch.no_grad():
        weight.fill_(5.0)
    with ema.swapped_in():
        assert torch.equal(weight.detach(), ema.averaged()[0])
    assert torch.equal(weight.detach(), torch.full((2,), 5.0))


@pytest.mark.slow
def test_ema_adapter_is_saved_and_resumed_exactly(tmp_path: Path, tiny_sdxl: Path) -> None:
    flags = ("--use_ema", "--ema_decay", "0.9", "--max_train_steps", "6", "--checkpointing_steps", "3",
             "--train_batch_size", "2", "--learning_rate", "1e-3")
    project = write_two_class_project(tmp_path, per_class=4)
    output = train_in_process(project, tiny_sdxl, "sdxl", *flags)
    live = load_file(output / "pytorch_lora_weights.safetensors")
    averaged = load_file(output / "ema" / "pytorch_lora_weights.safetensors")
    assert live.keys() == averaged.keys()
    assert any(not torch.equal(live[k], averaged[k]) for k in live), "EMA adapter equals the live one"
    assert (output / "checkpoint-3" / "ema.safetensors").is_file()

    shutil.copytree(output / "checkpoint-3", project / "resumed" / "checkpoint-3")
    resumed = train_in_process(
        project, tiny_sdxl, "sdxl", *flags, "--resume_from_checkpoint", "latest", output_name="resumed"
    )
    resumed_average = load_file(resumed / "ema" / "pytorch_lora_weights.safetensors")
    for key in averaged:
        assert torch.equal(averaged[key], resumed_average[key]), key
