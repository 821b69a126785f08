"""--lora_init_type: how each choice starts the adapter, and that weight-aware starts save correctly.

Also --lora_dropout, which PEFT applies inside each LoRA layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapter_harness import fresh_denoiser, output, train, trained_denoiser, write_project
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.families.registry import get_family
from simpletuner.training.trainable import LoraTraining

RANK, ALPHA = 4, 8.0  # a LoRA scale of 2, so a forgotten scale shows
SCALE = ALPHA / RANK
LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def _config(tiny_sdxl: Path, init: str, tmp_path: Path, *extra: str):
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
            "--data_backend_config", "mdb.json", "--output_dir", "out", "--lora_rank", str(RANK),
            "--lora_alpha", str(ALPHA), "--lora_init_type", init, *extra]
    return load_config(argv, env={}, cwd=tmp_path)


def _inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(2, 4, 8, 8, generator=generator), timestep=torch.tensor([10, 500]),
        encoder_hidden_states=torch.randn(2, 4, 64, generator=generator),
        added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=generator),
                           "time_ids": torch.randn(2, 6, generator=generator)},
    )


def _start(tiny_sdxl: Path, init: str, tmp_path: Path):
    """(base UNet, UNet with a freshly initialised adapter, the wrapped layer, its original weight)."""
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet").eval()
    model = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet").eval()
    config = _config(tiny_sdxl, init, tmp_path)
    torch.manual_seed(0)
    LoraTraining(config, get_family("sdxl", config)).prepare(model)
    layer = model.get_submodule(LAYER)
    return base, model, layer, base.get_submodule(LAYER).weight.detach()


def _a(layer) -> torch.Tensor:
    return layer.lora_A["default"].weight.detach()


def _b(layer) -> torch.Tensor:
    return layer.lora_B["default"].weight.detach()


@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_zero_b_inits_start_exactly_at_the_base_model(tmp_path: Path, tiny_sdxl: Path, init: str) -> None:
    base, model, layer, weight = _start(tiny_sdxl, init, tmp_path)
    assert torch.equal(_b(layer), torch.zeros_like(_b(layer)))
    assert torch.equal(layer.base_layer.weight.detach(), weight), "the base weights are left alone"
    assert torch.equal(output(model, _inputs()), output(base, _inputs()))
    a = _a(layer)
    if init == "default":
        # Kaiming-uniform rows: bounded by 1/sqrt(fan_in), far narrower than 1/rank.
        assert a.abs().max() <= 1 / weight.shape[1] ** 0.5
    else:
        # Gaussian with standard deviation 1/rank.
        assert abs(a.std().item() - 1 / RANK) < 0.25 / RANK


def test_pissa_moves_the_principal_components_into_the_adapter(tmp_path: Path, tiny_sdxl: Path) -> None:
    base, model, layer, weight = _start(tiny_sdxl, "pissa", tmp_path)
    delta = SCALE * _b(layer) @ _a(layer)
    u, s, vh = torch.linalg.svd(weight)
    assert torch.allclose(delta, u[:, :RANK] @ torch.diag(s[:RANK]) @ vh[:RANK], atol=1e-5)
    residual = layer.base_layer.weight.detach()
    assert torch.allclose(residual + delta, weight, atol=1e-5)
    assert torch.allclose(torch.linalg.svdvals(residual)[: len(s) - RANK], s[RANK:], atol=1e-5)
    assert torch.allclose(output(model, _inputs()), output(base, _inputs()), atol=1e-5)


def test_olora_starts_from_the_qr_factors(tmp_path: Path, tiny_sdxl: Path) -> None:
    base, model, layer, weight = _start(tiny_sdxl, "olora", tmp_path)
    b, a = _b(layer), _a(layer)
    assert torch.allclose(b.T @ b, torch.eye(RANK), atol=1e-5), "B's columns are orthonormal (Q)"
    assert torch.allclose(torch.triu(a[:, :RANK]), a[:, :RANK]), "A's leading block is upper triangular (R)"
    assert torch.allclose(layer.base_layer.weight.detach() + SCALE * b @ a, weight, atol=1e-5)
    assert not torch.allclose(layer.base_layer.weight.detach(), weight)
    assert torch.allclose(output(model, _inputs()), output(base, _inputs()), atol=1e-5)


def test_loftq_is_refused_with_the_reason(tmp_path: Path, tiny_sdxl: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tiny_sdxl, "loftq", tmp_path)
    message = str(caught.value)
    assert "--lora_init_type=loftq is not implemented yet" in message
    assert "4-bit quantised base model" in message


@pytest.mark.slow
@pytest.mark.parametrize("family, init", [("sdxl", "pissa"), ("flux", "olora")])
def test_weight_aware_init_saves_a_lora_for_the_real_base_weights(tmp_path: Path, request, family: str,
                                                                   init: str) -> None:
    """The run trained on residual weights; its saved LoRA must still reproduce it on the base model."""
    model = request.getfixturevalue(f"tiny_{family}")
    project = write_project(tmp_path)
    trainer, recorded = train(project, model, family, "--lora_init_type", init, "--lora_rank", str(RANK),
                              "--lora_alpha", str(ALPHA), "--max_train_steps", "3", "--learning_rate", "1e-3",
                              "--train_batch_size", "2", "--checkpointing_steps", "3", record=True)
    inputs = recorded.inputs[-1]
    expected = output(trained_denoiser(trainer), inputs)
    base = fresh_denoiser(trainer)
    assert not torch.allclose(expected, output(base, inputs), atol=1e-4), "training changed nothing"
    for folder in (project / "output", project / "output" / "checkpoint-3"):
        pipeline = trainer.family.pipeline_class().from_pretrained(model)
        trainer.family.load_lora(pipeline, folder)
        denoiser = getattr(pipeline, trainer.family.denoiser_component).float().eval()
        assert torch.allclose(output(denoiser, inputs), expected, atol=1e-5), folder
        ranks = {p.shape[0] for name, p in denoiser.named_parameters() if "lora_A" in name}
        assert ranks == {2 * RANK}


@pytest.mark.parametrize("dropout", [0.25, 0.0])
def test_lora_dropout_reaches_every_lora_layer(tmp_path: Path, tiny_sdxl: Path, dropout: float) -> None:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    config = _config(tiny_sdxl, "default", tmp_path, "--lora_dropout", str(dropout))
    LoraTraining(config, get_family("sdxl", config)).prepare(model)
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout") and "default" in m.lora_dropout]
    assert layers, "no LoRA layers"
    for layer in layers:
        applied = layer.lora_dropout["default"]
        if dropout:
            assert isinstance(applied, torch.nn.Dropout) and applied.p == dropout
        else:
            assert isinstance(applied, torch.nn.Identity)  # PEFT's "no dropout"
