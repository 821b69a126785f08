"""Device check for the quantisation matrix's GPU cells (run on a CUDA machine).

Usage::

    python benchmarks/quantisation_gpu.py [--families sdxl,flux] [--steps 4] [--workdir DIR]

For every precision the support matrix says runs on this GPU (and would not
run on a CPU, or whose CUDA path differs: quanto and torchao kernels), it
trains a tiny model with the real Trainer (bf16 mixed precision, a PEFT LoRA)
and checks what ``tests/test_quantisation_training.py`` checks on a CPU:

* the loss on the batches it trained on is lower with the adapter than without;
* layers were quantised, and none the family keeps unquantised;
* the saved LoRA holds only float LoRA matrices and loads onto the
  *unquantised* base model with ``load_lora_weights`` with the trained values.

It also trains int8-quanto once under TRAINING_DYNAMO_BACKEND=inductor.
Prints one line per cell and exits 1 when any cell the matrix marks as
working fails (the matrix row, not this script, is then what must change).
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


def _project(root: Path) -> Path:
    from PIL import Image

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, colour in {"red": (230, 20, 20), "blue": (20, 40, 230)}.items():
        for index in range(2):
            Image.new("RGB", (64, 64), colour).save(data / f"{name}_{index}.png")
            (data / f"{name}_{index}.txt").write_text(name, encoding="utf-8")
    (root / "mdb.json").write_text(json.dumps([
        {"id": "classes", "type": "local", "instance_data_dir": str(data), "cache_dir_vae": str(root / "cache/vae"),
         "caption_strategy": "textfile", "resolution": 64, "resolution_type": "pixel", "aspect_bucket_alignment": 16},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(root / "cache/text")},
    ]), encoding="utf-8")
    return root


def _cell(root: Path, model: Path, family: str, precision: str, steps: int) -> str:
    import torch
    from accelerate.state import AcceleratorState
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from simpletuner.config.loader import load_config
    from simpletuner.quantisation.apply import excluded, quantised_layer_names
    from simpletuner.training import trainer as trainer_module

    output = root / f"out-{family}-{precision}-{os.environ.get('TRAINING_DYNAMO_BACKEND', 'eager')}"
    config = load_config([
        "--model_family", family, "--pretrained_model_name_or_path", str(model), "--data_backend_config",
        str(root / "mdb.json"), "--output_dir", str(output), "--mixed_precision", "bf16", "--seed", "0",
        "--checkpointing_steps", "100000", "--base_model_precision", precision, "--max_train_steps", str(steps),
        "--learning_rate", "3e-3", "--lora_rank", "4", "--report_to", "none",
    ], env=dict(os.environ), cwd=root)
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = trainer_module.Trainer(config, show_progress=False)
    seen: list[tuple] = []
    original = trainer.family.model_inputs

    def recording(batch, noisy, timesteps):
        inputs = original(batch, noisy, timesteps)
        seen.append((dict(inputs), noisy.detach()))
        return inputs

    targets: list = []
    mse = trainer_module.weighted_mse

    def recording_mse(prediction, target, *args, **kwargs):
        targets.append(target.detach())
        return mse(prediction, target, *args, **kwargs)

    trainer.family.model_inputs, trainer_module.weighted_mse = recording, recording_mse
    try:
        trainer.run()
    finally:
        trainer_module.weighted_mse = mse
    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser).eval()

    def loss() -> float:
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            values = [torch.nn.functional.mse_loss(trainer.family.prediction(denoiser(**i), n).float(), t.float())
                      for (i, n), t in zip(seen, targets)]
        return float(sum(values) / len(values))

    with trainer.trainable.base_model(denoiser):
        before = loss()
    after = loss()
    quantised = quantised_layer_names(denoiser)
    problems = []
    if after >= before:
        problems.append(f"loss did not fall ({before:.4f} -> {after:.4f})")
    if not quantised or any(excluded(n, trainer.family.quantisation_exclude) for n in quantised):
        problems.append("wrong layers quantised")
    saved = load_file(output / "pytorch_lora_weights.safetensors")
    if not all(type(v) is torch.Tensor and v.dtype.is_floating_point for v in saved.values()):
        problems.append("saved file holds non-float tensors")
    pipeline = trainer.family.pipeline_class().from_pretrained(str(model))
    trainer.family.load_lora(pipeline, output)
    base = getattr(pipeline, trainer.family.denoiser_component)
    loaded = get_peft_model_state_dict(base, adapter_name=next(iter(base.peft_config)))
    trained = get_peft_model_state_dict(denoiser)
    if loaded.keys() != trained.keys() or any(
            not torch.equal(loaded[k].float().cpu(), trained[k].float().cpu()) for k in trained):
        problems.append("LoRA does not round-trip onto the unquantised base")
    verdict = "; ".join(problems) or "ok"
    return f"loss {before:.4f} -> {after:.4f}, {len(quantised)} layers quantised: {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="sdxl,flux")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from simpletuner.quantisation.matrix import CPU, ROWS, Hardware, detect_hardware, runs_on
    from simpletuner.tools.tiny_model import make_tiny_model

    hardware = detect_hardware()
    if hardware.kind != "cuda":
        print(f"this script checks GPU cells; found {hardware.describe()}", file=sys.stderr)
        return 2
    root = args.workdir or Path(tempfile.mkdtemp(prefix="quantisation_gpu_"))
    _project(root)
    # Every quantised precision this GPU runs: the GPU-only cells, and the CPU
    # ones whose CUDA kernels differ from the CPU path the tests cover.
    cells = [(row.precision, family) for row in ROWS if row.precision != "no_change" and runs_on(row, hardware)
             for family in args.families.split(",")]
    cells.append(("int8-quanto@inductor", args.families.split(",")[0]))
    failures = 0
    for label, family in cells:
        precision, _, dynamo = label.partition("@")
        model = root / f"model-{family}"
        if not model.exists():
            make_tiny_model(family, model, seed=0)
        os.environ["TRAINING_DYNAMO_BACKEND"] = dynamo or "no"
        started = time.perf_counter()
        try:
            result = _cell(root, model, family, precision, args.steps)
        except Exception as error:  # report every cell, then fail
            traceback.print_exc()
            result = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        failures += not result.endswith(": ok")
        cpu_too = "" if not runs_on(next(r for r in ROWS if r.precision == precision), Hardware(CPU)) else " (also CPU)"
        print(f"{label:24} {family:8} {time.perf_counter() - started:6.1f}s{cpu_too}  {result}", flush=True)
    print(f"{len(cells) - failures}/{len(cells)} GPU cells work on {hardware.describe()}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
