"""Device check for the GPU-only --attention_mechanism backends (run on a CUDA machine).

Usage::

    python benchmarks/attention_gpu.py [--steps 2] [--workdir DIR] [--skip-training]

For every mechanism of ``simpletuner/attention/backends.py`` and every tiny
family it applies to (Flux for the dispatcher backends; sdxl too for
xformers), on this GPU:

* when the backend table says it runs here (package installed, compute
  capability high enough), a bf16 forward and backward pass of the tiny
  denoiser with the mechanism set as the trainer sets it must match PyTorch
  SDPA's output within bf16 tolerance (a bitwise-equal output is noted: SDPA
  may pick the same kernel), and the attention projections must get gradients,
  except under SageAttention, which has no backward pass: there the check is
  that they get none, as the option's warning says;
* with ``--fused_qkv_projections`` the same pass matches too, and the step
  time fused and unfused is printed (``fused_step_ratio``);
* unless --skip-training, the real Trainer trains a LoRA for --steps steps
  with the mechanism and saves it;
* when the table says it cannot run here, config validation must refuse it
  with one line (printed).

Prints one line per cell and exits 1 when a cell the table marks as working
fails (the table, not this script, is then what must change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _families_for(mechanism) -> list[str]:
    if mechanism.name == "xformers":
        return ["flux", "sdxl"]
    return ["flux"]


def _inputs(family, denoiser, model: Path, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    channels = json.loads((model / "vae" / "config.json").read_text())["latent_channels"]
    batch = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in family.example_text_batch(denoiser.config, 2).items()}
    noisy = torch.randn(2, channels, 32, 32, generator=generator)
    inputs = family.model_inputs(batch, noisy, torch.tensor([100.0, 700.0]))
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}


def _pass(denoiser, inputs) -> tuple:
    """Output and the q/k/v projection gradients of one bf16-autocast forward and backward pass."""
    import torch

    denoiser.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        result = denoiser(**inputs)
        out = (result.sample if hasattr(result, "sample") else result[0]).float()
    out.square().mean().backward()
    torch.cuda.synchronize()
    grads = [p.grad for n, p in denoiser.named_parameters()
             if n.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_qkv.weight"))]
    return out.detach(), grads


def _timed(denoiser, inputs, repeats: int = 5) -> float:
    import torch

    _pass(denoiser, inputs)
    started = time.perf_counter()
    for _ in range(repeats):
        _pass(denoiser, inputs)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def _forward_cell(mechanism, family_name: str, model: Path) -> str:
    import torch

    from simpletuner.attention import fused_qkv
    from simpletuner.attention.apply import set_mechanism
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    family = get_family(family_name)
    denoiser = family.load_denoiser(ModelSource(base=str(model))).to("cuda").requires_grad_(True)
    inputs = _inputs(family, denoiser, model, "cuda")
    reference, _ = _pass(denoiser, inputs)
    set_mechanism(denoiser, mechanism.name, family)
    out, grads = _pass(denoiser, inputs)
    error = (out - reference).abs().max().item() / max(reference.abs().max().item(), 1e-6)
    if error > 5e-2:
        raise AssertionError(f"output differs from SDPA by {error:.3g} (relative)")
    # Informational only: PyTorch's SDPA may pick the same kernel (its flash or cuDNN one) by itself.
    same = " (bitwise SDPA's output)" if torch.equal(out, reference) else ""
    has_grads = [g is not None and g.abs().sum().item() > 0 for g in grads]
    if mechanism.name == "sageattention":
        if any(has_grads):
            raise AssertionError("q/k/v got gradients through SageAttention; update the option's warning")
        gradients = "no q/k/v gradients, as documented"
    else:
        if not all(has_grads):
            raise AssertionError("some q/k/v projections got no gradient")
        gradients = "q/k/v gradients present"
    unfused_time = _timed(denoiser, inputs)
    fused_line = ""
    if family.attention_dispatch or mechanism.name == "diffusers":
        fused_qkv.fuse(denoiser)
        set_mechanism(denoiser, mechanism.name, family)
        fused_out, _ = _pass(denoiser, inputs)
        fused_error = (fused_out - out).abs().max().item() / max(out.abs().max().item(), 1e-6)
        if fused_error > 5e-2:
            raise AssertionError(f"fused output differs by {fused_error:.3g} (relative)")
        fused_line = f", fused_step_ratio: {_timed(denoiser, inputs) / unfused_time:.3f}"
    return f"relative error {error:.2e}{same}, {gradients}, step {unfused_time * 1000:.1f} ms{fused_line}"


def _training_cell(mechanism, family_name: str, model: Path, root: Path, steps: int) -> str:
    from accelerate.state import AcceleratorState

    from simpletuner.config.loader import load_config
    from simpletuner.training.trainer import Trainer

    output = root / f"out-{family_name}-{mechanism.name}"
    config = load_config([
        "--model_family", family_name, "--pretrained_model_name_or_path", str(model), "--data_backend_config",
        str(root / "mdb.json"), "--output_dir", str(output), "--mixed_precision", "bf16", "--seed", "0",
        "--checkpointing_steps", "100000", "--max_train_steps", str(steps), "--learning_rate", "3e-3",
        "--report_to", "none", "--attention_mechanism", mechanism.name,
        *(["--sageattention_usage", "training+inference"] if mechanism.name == "sageattention" else []),
    ], env=dict(os.environ), cwd=root)
    AcceleratorState._reset_state(reset_partial_state=True)
    Trainer(config, show_progress=False).run()
    if not (output / "pytorch_lora_weights.safetensors").is_file():
        raise AssertionError("no LoRA saved")
    return f"trained {steps} steps"


def _refusal_cell(mechanism, family_name: str, root: Path) -> str:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError

    try:
        load_config(["--model_family", family_name, "--pretrained_model_name_or_path", "m", "--data_backend_config",
                     str(root / "mdb.json"), "--output_dir", str(root / "refused"), "--attention_mechanism",
                     mechanism.name], env={}, cwd=root)
    except ConfigError as error:
        lines = str(error).splitlines()
        if len(lines) != 1:
            raise AssertionError(f"refusal is {len(lines)} lines") from None
        return f"refused: {lines[0]}"
    raise AssertionError("validation accepted a mechanism the table says cannot run here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("attention_gpu: no CUDA GPU here; nothing to check", file=sys.stderr)
        return 2
    from quantisation_gpu import _project  # the same two-class project

    from simpletuner.attention.backends import DEFAULT, MECHANISMS, package_problem, runs_on
    from simpletuner.quantisation.matrix import detect_hardware
    from simpletuner.tools.tiny_model import make_tiny_model

    hardware = detect_hardware()
    print(f"attention_gpu: {torch.cuda.get_device_name()} ({hardware.describe()}), torch {torch.__version__}")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="attention_gpu_"))
    _project(root)
    models = {name: make_tiny_model(name, root / f"tiny_{name}", seed=0) for name in ("flux", "sdxl")}
    failures = 0
    for mechanism in MECHANISMS:
        if mechanism.name == DEFAULT:
            continue
        for family_name in _families_for(mechanism):
            cell = f"{mechanism.name:>16} {family_name:>5}"
            works = runs_on(mechanism, hardware) and package_problem(mechanism) is None
            try:
                if not works:
                    print(f"{cell}: {_refusal_cell(mechanism, family_name, root)}")
                    continue
                line = _forward_cell(mechanism, family_name, models[family_name])
                if not args.skip_training:
                    line += ", " + _training_cell(mechanism, family_name, models[family_name], root, args.steps)
                print(f"{cell}: ok, {line}")
            except Exception as error:  # one failing cell must not hide the others
                failures += 1
                print(f"{cell}: FAILED: {type(error).__name__}: {error}")
                traceback.print_exc(file=sys.stderr)
    print(f"attention_gpu: {failures} failing cell(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
