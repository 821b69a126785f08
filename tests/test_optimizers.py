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


def test_every_choice_is_implemented_and_has_a_spec() -> None:
    option = OPTIONS_BY_NAME["optimizer"]
    assert option.implemented is True
    assert set(option.choices) == set(OPTIMIZERS)


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


def test_schedule_free_variants_bring_their_settings_unless_the_user_sets_them(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config

    def kwargs(name: str, *flags: str) -> dict:
        """The settings the built optimizer really holds."""
        config = load_config(["--optimizer", name, "--lr_scheduler", "constant", "--print_config", *flags],
                             env={}, cwd=tmp_path)
        return build_optimizer([torch.nn.Parameter(torch.zeros(2))], config, 1e-3).param_groups[0]

    plain = kwargs("adamw_schedulefree")
    assert (plain["weight_decay"], plain["eps"], plain["kahan_sum"]) == (1e-2, 1e-8, True)
    aggressive = kwargs("adamw_schedulefree+aggressive")
    assert (aggressive["weight_decay"], aggressive["eps"], aggressive["kahan_sum"]) == (1e-3, 1e-6, True)
    no_kahan = kwargs("adamw_schedulefree+no_kahan")
    assert (no_kahan["weight_decay"], no_kahan["eps"], no_kahan["kahan_sum"]) == (1e-3, 1e-6, False)
    chosen = kwargs("adamw_schedulefree+aggressive", "--adam_weight_decay", "0.05", "--adam_epsilon", "1e-7")
    assert (chosen["weight_decay"], chosen["eps"]) == (0.05, 1e-7)
    assert kwargs("adamw_schedulefree+aggressive", "--optimizer_config", "kahan_sum=false")["kahan_sum"] is False


def _schedule_free_run(name: str, dtype: torch.dtype, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, averaged weights) after ``steps`` updates too small for one bf16 step each."""
    start = torch.rand(512, generator=torch.Generator().manual_seed(0)) + 1  # bf16 spacing here: 2**-7
    weights = torch.nn.Parameter(start.clone().to(dtype))
    optimizer = build_optimizer([weights], _config(optimizer=name, explicit=frozenset()), learning_rate=1e-4)
    set_optimizer_mode(optimizer, training=True)
    for _ in range(steps):
        weights.grad = torch.ones_like(weights)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    set_optimizer_mode(optimizer, training=False)  # the averaged weights, the ones saved
    return start, weights.detach().float()


def test_kahan_summation_keeps_updates_smaller_than_a_bf16_step() -> None:
    start, exact = _schedule_free_run("adamw_schedulefree+aggressive", torch.float32)
    moved = (exact - start).abs().mean()
    assert moved > 2**-7, "the fp32 run must move further than one bf16 step"
    _, kahan = _schedule_free_run("adamw_schedulefree+aggressive", torch.bfloat16)
    _, plain = _schedule_free_run("adamw_schedulefree+no_kahan", torch.bfloat16)
    # Without compensation every update rounds away; with it the weights follow
    # the fp32 run to within bf16 rounding (half a step, 2**-8).
    assert torch.equal(plain, start.bfloat16().float())
    assert (kahan - exact).abs().mean() < 2**-8
    assert (kahan - start).abs().mean() > 0.5 * moved


def test_schedule_free_kahan_state_survives_a_checkpoint_round_trip() -> None:
    weights = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    optimizer = build_optimizer([weights], _config(optimizer="adamw_schedulefree"), learning_rate=1e-4)
    set_optimizer_mode(optimizer, training=True)
    for _ in range(3):
        weights.grad = torch.ones_like(weights)
        optimizer.step()
    restored = build_optimizer([weights], _config(optimizer="adamw_schedulefree"), learning_rate=1e-4)
    restored.load_state_dict(optimizer.state_dict())
    for key, value in optimizer.state[weights].items():
        assert torch.equal(restored.state[weights][key], value), key
