"""Every --optimizer that can run here takes a real step on a tiny family model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from simpletuner.config.options import OPTIONS_BY_NAME
from simpletuner.errors import ConfigError
from simpletuner.training.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    hardware_problem,
    optimizer_kwargs,
    parse_optimizer_config,
    set_optimizer_mode,
)

RUNNABLE_HERE = [name for name in OPTIMIZERS if hardware_problem(name) is None]


def _config(**values):
    base = dict(
        optimizer="adamw_bf16", learning_rate=1e-3, adam_weight_decay=1e-2, adam_epsilon=1e-8,
        optimizer_beta1=None, optimizer_beta2=None, optimizer_config=None, lr_warmup_steps=0,
        lora_rank=4, lora_alpha=4, lora_dropout=0.0, lora_init_type="default",
    )
    return SimpleNamespace(**{**base, **values})


@pytest.fixture(scope="module")
def lora_unet(tiny_sdxl: Path):
    from diffusers import UNet2DConditionModel

    from simpletuner.training.adapters import add_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet")
    add_lora(unet, _config(), ("to_q", "to_k", "to_v", "to_out.0"))
    return unet


def _step(unet, optimizer) -> None:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    output = unet(
        sample, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 77, 64, generator=generator),
        added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=generator),
                           "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)},
    ).sample
    output.pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_every_implemented_choice_has_a_spec() -> None:
    implemented = OPTIONS_BY_NAME["optimizer"].implemented
    assert set(implemented) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", RUNNABLE_HERE)
def test_optimizer_takes_a_real_step(name: str, lora_unet) -> None:
    trained = [p for p in lora_unet.parameters() if p.requires_grad]
    frozen = next(p for p in lora_unet.parameters() if not p.requires_grad)
    with torch.no_grad():
        for p in trained:  # LoRA B starts at zero; give every weight a gradient path
            p.normal_(std=0.02)
    before = [p.detach().clone() for p in trained]
    frozen_before = frozen.detach().clone()
    optimizer = build_optimizer(trained, _config(optimizer=name), learning_rate=1e-3)
    set_optimizer_mode(optimizer, training=True)
    _step(lora_unet, optimizer)
    _step(lora_unet, optimizer)
    moved = sum(not torch.equal(a, p) for a, p in zip(before, trained))
    assert moved == len(trained), f"{name} changed {moved}/{len(trained)} trainable tensors"
    assert torch.equal(frozen, frozen_before)


def test_shared_options_and_overrides_reach_the_optimizer() -> None:
    kwargs = optimizer_kwargs(
        "prodigy", _config(optimizer="prodigy", optimizer_beta2=0.95, optimizer_config="d_coef=0.5,decouple=false"), 1.0
    )
    assert kwargs["d_coef"] == 0.5 and kwargs["decouple"] is False
    assert kwargs["betas"] == (0.9, 0.95) and kwargs["weight_decay"] == 1e-2 and kwargs["lr"] == 1.0
    # betas given as a tuple inside the list
    assert parse_optimizer_config("betas=(0.8,0.9),eps=1e-6") == {"betas": (0.8, 0.9), "eps": 1e-6}


def test_unknown_optimizer_config_key_names_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match="d_coeff not accepted by prodigy.*d_coef"):
        optimizer_kwargs("prodigy", _config(optimizer="prodigy", optimizer_config="d_coeff=0.5"), 1.0)


def test_schedule_free_takes_its_warmup_and_switches_modes(lora_unet) -> None:
    params = [p for p in lora_unet.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, _config(optimizer="adamw_schedulefree", lr_warmup_steps=5), 1e-3)
    assert optimizer.param_groups[0]["warmup_steps"] == 5
    set_optimizer_mode(optimizer, training=True)
    for _ in range(3):  # after one step the averaged and live weights still coincide
        _step(lora_unet, optimizer)
    training_weights = params[0].detach().clone()
    set_optimizer_mode(optimizer, training=False)
    assert not torch.equal(training_weights, params[0]), "eval() must swap in the averaged weights"
    set_optimizer_mode(optimizer, training=True)
    assert torch.allclose(training_weights, params[0], atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rejection")
@pytest.mark.parametrize("name", ["bnb-adamw-paged", "bnb-lion8bit-paged", "ao-adamfp8", "ao-adamwfp8"])
def test_hardware_bound_optimizers_are_rejected_at_validation(name: str, tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config

    with pytest.raises(ConfigError, match=f"--optimizer={name} needs .*(CUDA|fp8)"):
        load_config(["--optimizer", name, "--model_family", "sdxl", "--pretrained_model_name_or_path", "m",
                     "--data_backend_config", "d.json"], env={}, cwd=tmp_path)


def test_schedule_free_with_a_cosine_schedule_is_rejected(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config

    with pytest.raises(ConfigError, match="adamw_schedulefree replaces the learning-rate schedule"):
        load_config(["--optimizer", "adamw_schedulefree", "--lr_scheduler", "cosine", "--print_config"],
                     env={}, cwd=tmp_path)
