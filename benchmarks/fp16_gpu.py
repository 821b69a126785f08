"""Device check for --mixed_precision fp16 (run on a CUDA machine; the CPU refuses fp16).

Usage::

    python benchmarks/fp16_gpu.py [--families sdxl,flux] [--steps 6] [--workdir DIR]

For each family it trains a tiny model's PEFT LoRA with the real Trainer under
``--mixed_precision fp16`` (both --grad_clip_method choices) and checks:

* accelerate made a GradScaler (loss scaling is on) and its scale is a power
  of two above 1 after the run (it scaled the loss, and halved it on overflow);
* the frozen base weights are fp16 and the trained LoRA weights fp32 (the
  scaler refuses to unscale fp16 gradients);
* every loss was finite, and the saved LoRA is finite with B matrices moved
  away from their zero start (the optimizer stepped despite skipped steps).

Prints one line per case and exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _case(root: Path, model: Path, family: str, clip: str, steps: int) -> str:
    import torch
    from accelerate.state import AcceleratorState
    from family_harness import write_two_class_project
    from safetensors.torch import load_file

    from simpletuner.config.loader import load_config
    from simpletuner.training.trainer import Trainer

    project = write_two_class_project(root / f"{family}-{clip}", per_class=2)
    output = project / "output"
    config = load_config([
        "--model_family", family, "--pretrained_model_name_or_path", str(model), "--data_backend_config",
        str(project / "mdb.json"), "--output_dir", str(output), "--mixed_precision", "fp16", "--model_type", "lora",
        "--seed", "0", "--max_train_steps", str(steps), "--train_batch_size", "2", "--checkpointing_steps", "1000",
        "--grad_clip_method", clip, "--learning_rate", "1e-3",
    ], env={}, cwd=project)
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(config, show_progress=False)
    losses: list[float] = []
    loss = trainer._loss

    def watched(samples: list) -> torch.Tensor:
        value = loss(samples)
        losses.append(value.item())
        return value

    trainer._loss = watched
    trainer.run()
    scaler = trainer.accelerator.scaler
    problems = []
    if scaler is None:
        problems.append("no GradScaler")
    else:
        scale = scaler.get_scale()
        if not (scale > 1 and math.log2(scale).is_integer()):
            problems.append(f"loss scale {scale}")
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser)
    frozen = {p.dtype for p in denoiser.parameters() if not p.requires_grad and p.is_floating_point()}
    trained = {p.dtype for p in trainer.trained_parameters}
    if frozen != {torch.float16} or trained != {torch.float32}:
        problems.append(f"dtypes frozen {frozen} trained {trained}")
    if not all(math.isfinite(v) for v in losses):
        problems.append(f"losses {losses}")
    saved = load_file(str(output / "pytorch_lora_weights.safetensors"))
    if not all(torch.isfinite(v).all() for v in saved.values()):
        problems.append("non-finite LoRA")
    b = [v for k, v in saved.items() if "lora_B" in k or "lora.up" in k]
    if not b or max(v.abs().max().item() for v in b) == 0:
        problems.append("LoRA B matrices still zero")
    detail = f"scale={scaler.get_scale() if scaler else None} losses={[round(v, 4) for v in losses]}"
    return ("ok   " if not problems else "FAIL ") + f"{family} {clip}: {detail}" + (f" {problems}" if problems else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sdxl,flux")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: fp16 training is refused on the CPU (see config/training_rules.py)")
        return 1
    from simpletuner.tools.tiny_model import make_tiny_model

    root = args.workdir or Path(tempfile.mkdtemp(prefix="fp16-gpu-"))
    failed = False
    for family in args.families.split(","):
        model = make_tiny_model(family, root / f"tiny-{family}", seed=0)
        for clip in ("value", "norm"):
            try:
                line = _case(root, model, family, clip, args.steps)
            except Exception:  # noqa: BLE001 - a device check reports every case
                line = f"FAIL {family} {clip}: {traceback.format_exc().splitlines()[-1]}"
            failed |= line.startswith("FAIL")
            print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
