"""Applying a backend to a loaded module: what the libraries need that our models give them."""

from __future__ import annotations

import pytest
import torch

from simpletuner.quantisation.apply import quantise


@pytest.mark.parametrize("precision", ["int8-quanto", "int4-quanto"])
def test_quanto_layers_take_non_contiguous_bf16_inputs(precision: str) -> None:
    """SDXL's transformer blocks hand proj_in a permuted tensor; quanto's CPU kernels refuse those."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(640, 640)).to(torch.bfloat16)
    quantise(model, precision)
    pixels = torch.randn(1, 640, 8, 8, dtype=torch.bfloat16)
    permuted = pixels.permute(0, 2, 3, 1)
    assert not permuted.is_contiguous()
    with torch.no_grad():
        assert torch.equal(model(permuted), model(permuted.contiguous()))
