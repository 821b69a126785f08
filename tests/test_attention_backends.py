"""--attention_mechanism on the CPU: a dispatcher backend really computes Flux's attention, to the same result.

``native_math`` (diffusers' ``_native_math``: PyTorch SDPA pinned to its
math kernel) is the CPU-capable backend besides the default.  A Flux LoRA
trained with it matches one trained with the default within tolerance, but
not bit for bit: a seeded CPU run is bitwise repeatable, so the
difference shows another kernel ran during training.  The torch profiler names the kernel of the trained model's
forward and backward pass.  The GPU-only backends run in
``benchmarks/attention_gpu.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from adapter_harness import train, write_project
from simpletuner.attention.apply import dispatching_processors, prepare_attention, set_mechanism, validation_attention
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family

MATH_KERNEL = "aten::_scaled_dot_product_attention_math"


def _attention_kernels(denoiser: torch.nn.Module, family, model: Path) -> set[str]:
    """The aten attention kernels one forward and backward pass of ``denoiser`` runs."""
    from test_fused_qkv import _inputs

    inputs = _inputs(family, denoiser, model)
    with torch.profiler.profile() as profile:
        result = denoiser(**inputs)
        (result.sample if hasattr(result, "sample") else result[0]).square().mean().backward()
    return {event.key for event in profile.key_averages() if "scaled_dot_product" in event.key}


def _lora(root: Path, model: Path, *flags: str, name: str) -> tuple[dict[str, torch.Tensor], object]:
    trainer, _ = train(root, model, "flux", "--max_train_steps", "2", "--learning_rate", "1e-2",
                       "--validation_steps", "100000", *flags, output_name=name)
    return load_file(str(root / name / "pytorch_lora_weights.safetensors")), trainer


def test_native_math_trains_flux_like_the_default_through_another_kernel(tmp_path: Path, tiny_flux: Path) -> None:
    write_project(tmp_path)
    default, default_trainer = _lora(tmp_path, tiny_flux, name="default")
    math, math_trainer = _lora(tmp_path, tiny_flux, "--attention_mechanism", "native_math", name="math")
    assert default.keys() == math.keys() and default
    # Seeded CPU runs are bitwise repeatable (the prefetch and resume tests rely on it), so a
    # difference means another kernel computed the training steps.
    assert any(not torch.equal(default[k], math[k]) for k in default)
    for key in default:
        torch.testing.assert_close(math[key], default[key], rtol=1e-3, atol=1e-5)
    family = get_family("flux")
    denoiser = math_trainer.accelerator.unwrap_model(math_trainer.denoiser)
    assert MATH_KERNEL in _attention_kernels(denoiser, family, tiny_flux)
    plain = default_trainer.accelerator.unwrap_model(default_trainer.denoiser)
    assert MATH_KERNEL not in _attention_kernels(plain, family, tiny_flux)
    # The same weights give the same loss with either backend, within float tolerance.
    from test_fused_qkv import _inputs

    inputs = _inputs(family, plain, tiny_flux)
    with torch.no_grad():
        sdpa_loss = plain(**inputs).sample.square().mean().item()
        set_mechanism(plain, "native_math", family)
        math_loss = plain(**inputs).sample.square().mean().item()
    assert math_loss == pytest.approx(sdpa_loss, rel=1e-5)


def _config(usage: str) -> SimpleNamespace:
    return SimpleNamespace(attention_mechanism="sageattention", sageattention_usage=usage,
                           fused_qkv_projections=False)


def _backends(denoiser: torch.nn.Module) -> set:
    return {processor._attention_backend for processor in dispatching_processors(denoiser)}


@pytest.mark.parametrize("usage, training, validation", [
    ("inference", {None}, {"sage"}),
    ("training", {"sage"}, {None}),
    ("training+inference", {"sage"}, {"sage"}),
])
def test_sageattention_usage_picks_where_it_runs(tiny_flux: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture, usage: str, training: set,
                                                 validation: set) -> None:
    # SageAttention has no CPU build: only diffusers' package check is skipped; nothing here computes with it.
    import diffusers.models.attention_dispatch as dispatch

    monkeypatch.setattr(dispatch, "_check_attention_backend_requirements", lambda backend: None)
    family = get_family("flux")
    denoiser = family.load_denoiser(ModelSource(base=str(tiny_flux)))
    with caplog.at_level(logging.WARNING, logger="simpletuner.attention.apply"):
        prepare_attention(denoiser, _config(usage), family)
    named = {None if b is None else b.value for b in _backends(denoiser)}
    assert named == training
    warned = any("no gradient reaches the query, key and value projections" in r.message for r in caplog.records)
    assert warned == ("training" in usage)
    with validation_attention(denoiser, _config(usage), family):
        assert {None if b is None else b.value for b in _backends(denoiser)} == validation
    assert {None if b is None else b.value for b in _backends(denoiser)} == training  # back for training
