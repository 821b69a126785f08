"""--gradient_checkpointing_interval: only every n-th block is checkpointed, gradients unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint

from family_harness import train_in_process, write_two_class_project
from simpletuner.config.loader import load_config
from simpletuner.training.grad_checkpointing import enable_gradient_checkpointing


@pytest.fixture
def checkpointed_blocks(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every block torch.utils.checkpoint.checkpoint is asked to run, in order."""
    calls: list = []
    real = torch.utils.checkpoint.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(getattr(function, "__self__", function))
        return real(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


def _unet(model: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(model, subfolder="unet")


def _unet_loss(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    output = unet(
        torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 500]),
        encoder_hidden_states=torch.randn(2, 77, 64, generator=generator),
        added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=generator),
                           "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)},
    ).sample
    return output.pow(2).mean()


def _flux(model: Path):
    from diffusers import FluxTransformer2DModel

    # The tiny model's settings with more blocks, so that every n-th is a real choice.
    config = json.loads((model / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return FluxTransformer2DModel(**{**config, "num_layers": 3, "num_single_layers": 4})


def _flux_loss(transformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    tokens, text = 16, 5
    output = transformer(
        hidden_states=torch.randn(1, tokens, 64, generator=generator),
        encoder_hidden_states=torch.randn(1, text, 32, generator=generator),
        pooled_projections=torch.randn(1, 32, generator=generator),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.randn(tokens, 3, generator=generator), txt_ids=torch.zeros(text, 3),
    ).sample
    return output.pow(2).mean()


def _gradients(model, loss_fn) -> dict[str, torch.Tensor]:
    model.requires_grad_(True).train()
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind, interval", [("unet", 3), ("flux", 2)])
def test_interval_checkpoints_every_nth_block_with_the_same_gradients(
    kind: str, interval: int, tiny_sdxl: Path, tiny_flux: Path, checkpointed_blocks: list
) -> None:
    if kind == "unet":
        build, loss_fn = (lambda: _unet(tiny_sdxl)), _unet_loss
    else:
        build, loss_fn = (lambda: _flux(tiny_flux)), _flux_loss
    reference = _gradients(build(), loss_fn)
    assert not checkpointed_blocks

    every = build()
    enable_gradient_checkpointing(every)
    assert _gradients(every, loss_fn).keys() == reference.keys()
    all_blocks = list(checkpointed_blocks)
    checkpointed_blocks.clear()

    sparse = build()
    enable_gradient_checkpointing(sparse, interval)
    gradients = _gradients(sparse, loss_fn)
    assert len(all_blocks) > interval
    assert len(checkpointed_blocks) == math.ceil(len(all_blocks) / interval)
    # The first block call, then every n-th: the same positions plain checkpointing saw.
    names = {id(module): name for name, module in sparse.named_modules()}
    every_names = {id(module): name for name, module in every.named_modules()}
    assert [names[id(b)] for b in checkpointed_blocks] == [every_names[id(b)] for b in all_blocks][::interval]
    for name, gradient in reference.items():
        assert torch.allclose(gradients[name], gradient, atol=1e-6, rtol=1e-5), name


def test_the_same_blocks_are_checkpointed_in_every_forward(tiny_flux: Path, checkpointed_blocks: list) -> None:
    transformer = _flux(tiny_flux)
    enable_gradient_checkpointing(transformer, 3)  # 7 blocks: a count that would drift between passes
    transformer.requires_grad_(True).train()
    _flux_loss(transformer).backward()
    first = list(checkpointed_blocks)
    checkpointed_blocks.clear()
    _flux_loss(transformer).backward()
    assert [id(b) for b in checkpointed_blocks] == [id(b) for b in first]


def test_interval_needs_gradient_checkpointing(tmp_path: Path) -> None:
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config", "d.json",
            "--gradient_checkpointing_interval", "2"]
    config = load_config(argv, env={}, cwd=tmp_path)
    assert config.ignored == ("--gradient_checkpointing_interval=2 has no effect: only --gradient_checkpointing "
                              "uses it; ignoring it",)
    assert config.gradient_checkpointing_interval is None
    assert load_config([*argv, "--gradient_checkpointing"], env={}, cwd=tmp_path).gradient_checkpointing_interval == 2


def test_a_training_run_checkpoints_every_nth_block(tmp_path: Path, tiny_sdxl: Path, checkpointed_blocks: list) -> None:
    every = _unet(tiny_sdxl)
    enable_gradient_checkpointing(every)
    _gradients(every, _unet_loss)
    per_forward = len(checkpointed_blocks)
    checkpointed_blocks.clear()

    root = write_two_class_project(tmp_path, per_class=1)
    steps = 2
    train_in_process(root, tiny_sdxl, "sdxl", "--max_train_steps", str(steps), "--gradient_checkpointing",
                     "--gradient_checkpointing_interval", "2")
    assert len(checkpointed_blocks) == steps * math.ceil(per_forward / 2)
