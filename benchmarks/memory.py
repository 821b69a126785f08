"""Peak memory of loading, quantising and one LoRA step on real-size denoisers, against the estimate.

Usage::

    python benchmarks/memory.py [--models sdxl,flux] [--cases bf16,int8-quanto,int4-quanto,int8-torchao]
                                [--resolution 128] [--case_timeout 420] [--workdir DIR]

What runs
---------
* Models with random weights written as bf16 safetensors, from the published
  architectures: SDXL's UNet (2.6 B parameters, its known config) and Flux.1-dev's
  transformer at full width (``FluxTransformer2DModel()``'s defaults) with
  1 double + 2 single blocks instead of 19 + 38.  Each model folder also has
  a VAE config (latent channels), no VAE weights.  The full 19 + 38 Flux
  transformer is written as headers only (no data) and estimated too: the
  estimate never reads a weight.
* Each case in its own subprocess, one after another: load the denoiser in
  bf16 (``from_pretrained(torch_dtype=bfloat16)``), or for a quantised case
  load it as the trainer does (``simpletuner.quantisation.streaming``: built on
  the meta device, each block read from the file and quantised with quanto
  ``quantize`` + ``freeze`` or torchao ``Int8WeightOnlyConfig`` before the
  next, the family's keep-unquantised layers left alone), add the trainer's LoRA (rank 16, the family's default targets),
  build the trainer's optimizer (adamw_bf16), and run one training step
  (forward under bf16 autocast, backward, optimizer step) at one
  ``--resolution`` square, batch 1.
* Peak RSS is the process's ``ru_maxrss`` less its RSS after imports (what the
  Python libraries take is not the run's to estimate).  ``load`` is the peak
  after loading and quantising, before the adapter; ``step`` the peak at the end.

Printed lines: one per case (load peak, step peak, estimate, step time), then
``int8_peak_ratio``, ``int4_peak_ratio`` (SDXL step peak of the case over bf16),
``quantise_ram_ratio`` (SDXL load peak with int8-quanto over the UNet's bf16
size), ``estimate_error`` (largest |estimate - measured| / measured over the
runs), and the step-time ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
FLUX_REDUCED = dict(num_layers=1, num_single_layers=2)
FLUX_FULL = dict(num_layers=19, num_single_layers=38)
MODELS = {"sdxl": ("unet", "UNet2DConditionModel", 4), "flux": ("transformer", "FluxTransformer2DModel", 16)}


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ building
def _model_folder(root: Path, model: str, header_only: bool = False) -> Path:
    """A diffusers folder with the denoiser's weights (random, bf16) and the VAE's config."""
    import torch
    import diffusers

    component, class_name, latent_channels = MODELS[model]
    folder = root / (f"{model}_full_headers" if header_only else model)
    if (folder / component / "config.json").is_file():
        return folder
    model_class = getattr(diffusers, class_name)
    kwargs = SDXL_UNET if model == "sdxl" else (FLUX_FULL if header_only else FLUX_REDUCED)
    with torch.device("meta"):
        denoiser = model_class(**kwargs)
    (folder / component).mkdir(parents=True, exist_ok=True)
    denoiser.save_config(str(folder / component))
    diffusers.AutoencoderKL(latent_channels=latent_channels).save_config(str(folder / "vae"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "x", component: ["diffusers", class_name]}))
    target = folder / component / "diffusion_pytorch_model.safetensors"
    if header_only:
        _write_header_only(target, {k: tuple(v.shape) for k, v in denoiser.state_dict().items()})
    else:
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(0)
        state = {}
        for name, tensor in denoiser.state_dict().items():
            state[name] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.bfloat16)
        save_file(state, str(target))
    return folder


def _write_header_only(path: Path, shapes: dict[str, tuple]) -> None:
    import struct

    header, offset = {}, 0
    for name, shape in shapes.items():
        count = 1
        for size in shape:
            count *= size
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


# ---------------------------------------------------------------- estimating
def _config(model: str, folder: Path, precision: str, resolution: int):
    from simpletuner.config.loader import load_config

    config = load_config(["--model_family", model, "--pretrained_model_name_or_path", str(folder),
                          "--data_backend_config", "unused.json", "--resolution", str(resolution),
                          "--base_model_precision", "no_change" if precision == "bf16" else precision],
                         env={}, cwd=REPO)
    return config, precision


def _estimate(model: str, folder: Path, precision: str, resolution: int):
    import torch

    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.memory.estimate import estimate_memory
    from simpletuner.memory.precision import quantised_weight_bytes
    from simpletuner.memory.report import required_memory

    config, _ = _config(model, folder, precision, resolution)
    family = get_family(model, config)
    estimate = estimate_memory(config, family, ModelSource(base=str(folder)), (resolution, resolution),
                               torch.bfloat16,
                               quantised_weight_bytes("no_change" if precision == "bf16" else precision))
    return estimate, required_memory(estimate, torch.device("cpu"))


# ------------------------------------------------------------------- one case
def run_case(model: str, folder: Path, precision: str, resolution: int) -> dict:
    import torch
    import diffusers

    from simpletuner.config.model import replace
    from simpletuner.families.registry import get_family
    from simpletuner.quantisation.streaming import load_quantised, weight_files
    from simpletuner.training.optimizers import build_optimizer
    from simpletuner.training.trainable import trainable_for

    torch.set_num_threads(2)
    component, class_name, latent_channels = MODELS[model]
    config, _ = _config(model, folder, precision, resolution)
    family = get_family(model, config)
    baseline = _rss()
    started = time.perf_counter()
    if precision == "bf16":
        denoiser = getattr(diffusers, class_name).from_pretrained(str(folder / component), torch_dtype=torch.bfloat16)
        denoiser.requires_grad_(False)
    else:
        # The trainer's loader: built on the meta device, read and quantised block by block.
        denoiser = load_quantised(getattr(diffusers, class_name), folder / component,
                                  weight_files(folder / component), precision, family.quantisation_exclude,
                                  "cpu", torch.bfloat16)
    family.denoiser_loaded(denoiser)
    load_peak, load_time = _peak() - baseline, time.perf_counter() - started
    trainable = trainable_for(config, family)
    trainable.prepare(denoiser)
    denoiser.train()
    parameters = trainable.parameters(denoiser)
    optimizer = build_optimizer(parameters, replace(config), 1e-4)
    latent = resolution // 8
    noisy = torch.randn(1, latent_channels, latent, latent, dtype=torch.bfloat16)
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in family.example_text_batch(denoiser.config, 1).items()}
    inputs = family.model_inputs(batch, noisy, torch.full((1,), 500.0))
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = family.prediction(denoiser(**inputs), noisy)
    loss = torch.nn.functional.mse_loss(prediction.float(), torch.randn(prediction.shape))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_time = time.perf_counter() - started
    return {"load_peak": load_peak, "step_peak": _peak() - baseline, "load_time": load_time,
            "step_time": step_time, "loss": float(loss)}


# --------------------------------------------------------------------- driver
def _gb(count: float) -> str:
    return f"{count / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="sdxl,flux")
    parser.add_argument("--cases", default="bf16,int8-quanto,int4-quanto,int8-torchao")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--case_timeout", type=int, default=420)
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "simpletuner-memory-benchmark"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # model:precision, run in a subprocess
    parser.add_argument("--build", help=argparse.SUPPRESS)  # model, written in a subprocess
    args = parser.parse_args()
    root = Path(args.workdir)
    if args.case:
        model, precision = args.case.split(":")
        print(json.dumps(run_case(model, root / model, precision, args.resolution)))
        return
    if args.build:
        _model_folder(root, args.build)
        return
    root.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], dict] = {}
    for model in args.models.split(","):
        # Written by a child process, so this one never holds the weights.
        subprocess.run([sys.executable, __file__, "--build", model, "--workdir", str(root)], check=True)
        folder = root / model
        if model == "flux":
            full = _model_folder(root, model, header_only=True)
            estimate, needed = _estimate(model, full, "bf16", args.resolution)
            print(f"flux full 19+38 estimate (headers only): {_gb(needed)}, "
                  f"{estimate.components['transformer'].parameters / 1e9:.2f} B parameters")
        for precision in args.cases.split(","):
            try:
                done = subprocess.run([sys.executable, __file__, "--case", f"{model}:{precision}", "--workdir",
                                       str(root), "--resolution", str(args.resolution)],
                                      capture_output=True, text=True, timeout=args.case_timeout)
            except subprocess.TimeoutExpired:
                print(f"{model} {precision}: took longer than --case_timeout {args.case_timeout} s", flush=True)
                continue
            if done.returncode != 0:
                print(f"{model} {precision}: failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            _estimate_result, needed = _estimate(model, folder, precision, args.resolution)
            measured["estimate"] = needed
            results[(model, precision)] = measured
            print(f"{model} {precision}: load peak {_gb(measured['load_peak'])}, step peak {_gb(measured['step_peak'])}, "
                  f"estimate {_gb(needed)}, load {measured['load_time']:.0f} s, step {measured['step_time']:.1f} s",
                  flush=True)
    _summary(results, root)


def _summary(results: dict, root: Path) -> None:
    from simpletuner.memory.params import count_component

    bf16 = results.get(("sdxl", "bf16"))
    if bf16:
        for name, precision in (("int8", "int8-quanto"), ("int4", "int4-quanto")):
            if ("sdxl", precision) in results:
                print(f"{name}_peak_ratio: {results[('sdxl', precision)]['step_peak'] / bf16['step_peak']:.2f}")
    if ("sdxl", "int8-quanto") in results:
        size = count_component("unet", root / "sdxl" / "unet").stored_bytes
        print(f"quantise_ram_ratio: {results[('sdxl', 'int8-quanto')]['load_peak'] / size:.2f}")
    errors = [abs(r["estimate"] - r["step_peak"]) / r["step_peak"] for r in results.values()]
    if errors:
        print(f"estimate_error: {max(errors):.3f}")
    for model in ("sdxl", "flux"):
        base = results.get((model, "bf16"))
        for precision in ("int8-quanto", "int4-quanto", "int8-torchao"):
            if base and (model, precision) in results:
                ratio = results[(model, precision)]["step_time"] / base["step_time"]
                print(f"{model} {precision} step time / bf16: {ratio:.2f}")


if __name__ == "__main__":
    main()
