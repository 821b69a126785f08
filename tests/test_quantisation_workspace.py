"""What a LoRA step through a quantised layer holds: nothing per layer for backward, and one
dequantised weight (``Precision.step_workspace``) while the layer runs, measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simpletuner.quantisation.apply import quantise, quantised_layer_names
from simpletuner.quantisation.precisions import PRECISIONS, get_precision

REPO = Path(__file__).resolve().parents[1]
CPU_PRECISIONS = [p.name for p in PRECISIONS if p.backend in ("quanto", "torchao")]


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    names = [name for name, m in model.named_children()]
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=names), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def _saved_for_backward(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    parameters = {id(p) for p in model.parameters()}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in parameters and id(base) not in parameters:
            saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).float().square().mean().backward()
    return saved


@pytest.mark.parametrize("precision", ["int8-torchao", "fp8-torchao"])
def test_torchao_layers_keep_no_weight_copy_for_backward(precision: str) -> None:
    """torchao's own linear saves a bf16 copy of each weight for backward (a second base model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)).to(torch.bfloat16)
    model.requires_grad_(False)
    quantise(model, precision)
    assert quantised_layer_names(model) == ["0", "1"]
    model = _lora(model)
    saved = _saved_for_backward(model, torch.randn(1, 8, 256, dtype=torch.bfloat16, requires_grad=True))
    weight_shapes = {(256, 1024), (1024, 256)}
    assert saved and not [tuple(t.shape) for t in saved if tuple(t.shape) in weight_shapes]
    # What is left are activations: 8 tokens by at most 1024 features a tensor.
    assert max(t.numel() for t in saved) <= 8 * 1024


@pytest.mark.parametrize("precision", ["int8-torchao", "fp8-torchao"])
def test_torchao_lighter_backward_gives_torchaos_gradients(precision: str) -> None:
    from simpletuner.quantisation.backward import FrozenQuantisedLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 32)).requires_grad_(False)
    quantise(model, precision)
    assert all(type(layer) is FrozenQuantisedLinear for layer in model)
    model = _lora(model)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # zero at init: make the LoRA path carry a gradient through
            torch.nn.init.normal_(parameter, std=0.1)
    x = torch.randn(2, 5, 64)

    def gradients() -> list[torch.Tensor]:
        inputs = x.clone().requires_grad_(True)
        model(inputs).square().mean().backward()
        grads = [inputs.grad] + [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return grads

    ours = gradients()
    for layer in model.modules():  # back to torchao's own autograd path
        if type(layer) is FrozenQuantisedLinear:
            layer.__class__ = torch.nn.Linear
    theirs = gradients()
    assert len(ours) == 5
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


_MEASURE = r"""
import json, sys, torch
from simpletuner.quantisation.apply import quantise
from peft import LoraConfig, inject_adapter_in_model
torch.set_num_threads(2)

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096

def high_water():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_high_water():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

results = {}
for precision, (features_in, features_out) in [(p, shape) for p in sys.argv[1:] for shape in ((3072, 12288), (12288, 3072))]:
    model = torch.nn.Sequential(torch.nn.Linear(features_in, features_out)).to(torch.bfloat16).requires_grad_(False)
    quantise(model, precision)
    model = inject_adapter_in_model(LoraConfig(r=16, target_modules=["0"]), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    x = torch.randn(1, 64, features_in, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(1, 64, features_out, dtype=torch.bfloat16)
    model(x).backward(grad)  # once first: lazy initialisation is not the step's
    x.grad = None
    reset_high_water()
    before = rss()
    model(x).backward(grad)
    results[precision] = max(results.get(precision, 0), high_water() - before)
    del model, x, grad
print(json.dumps(results))
"""


@pytest.mark.slow
def test_step_workspace_is_what_a_quantised_layer_really_holds() -> None:
    """One LoRA forward + backward through a Flux MLP's layers (3072 -> 12288 and back), the
    larger peak RSS over the RSS before it (int4's unpacking costs twice as much one way).  glibc is told to map every allocation over 64 KiB on its own,
    so freed memory goes back at once and the peak is what was live, not what the heap kept."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, "-c", _MEASURE, *CPU_PRECISIONS], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    weights = 3072 * 12288
    for precision in CPU_PRECISIONS:
        modelled = get_precision(precision).step_workspace * weights
        # Activations and LoRA gradients at 64 tokens are under 8 MiB of it.
        assert abs(measured[precision] - modelled) <= 0.1 * modelled + 8 * 2**20, (
            precision, measured[precision] / weights)
