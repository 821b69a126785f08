"""GPU check: FSDP2 and DeepSpeed ZeRO-2 train a few steps; memory per GPU for each.

Usage (on a machine with GPUs and ``pip install deepspeed``)::

    python benchmarks/deepspeed_fsdp_gpu.py [--gpus N] [--steps S] [--width W] [--layers L]

It cannot run on a CPU-only machine (it says so and exits 2). For each of
``fsdp2`` and ``zero2`` it starts ``N`` processes (default: every GPU) with
``torch.distributed.run``, trains a tiny-but-wide PixArt transformer with
AdamW in bf16 autocast for ``S`` steps on random inputs, and prints per
rank: the loss of the first and last step, the peak GPU memory allocated
(``torch.cuda.max_memory_allocated``) and the parameter + optimizer bytes the
rank holds. Both use the trainer's own code: ``fsdp2`` the sharding of
``simpletuner.distributed.fsdp.shard_denoiser`` (what --fsdp_enable does),
``zero2`` accelerate's DeepSpeed plugin as built by
``simpletuner.distributed.deepspeed.deepspeed_plugin`` (what
--deepspeed_config does) with ``{"zero_optimization": {"stage": 2}}``.

Expected with 2 or more GPUs: both train (finite, falling loss); fsdp2 holds
about 1/N of the weights and optimizer state per GPU, zero2 the whole weights
and about 1/N of the optimizer state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _model(width: int, layers: int) -> "torch.nn.Module":
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=width // 64, attention_head_dim=64, in_channels=4, out_channels=8,
        num_layers=layers, cross_attention_dim=width, caption_channels=64, sample_size=8,
        patch_size=2, norm_type="ada_norm_single", use_additional_conditions=False,
    )


def _batch(generator: "torch.Generator", device: "torch.device") -> dict:
    import torch

    return {"hidden_states": torch.randn(2, 4, 8, 8, generator=generator).to(device),
            "encoder_hidden_states": torch.randn(2, 8, 64, generator=generator).to(device),
            "timestep": torch.full((2,), 500, device=device),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def worker(mode: str, steps: int, width: int, layers: int, ds_config: str) -> None:
    import torch

    from simpletuner.distributed.fsdp import local_bytes, optimizer_tensors

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda", torch.cuda.current_device())
    model = _model(width, layers)
    if mode == "fsdp2":
        import torch.distributed as dist

        from simpletuner.distributed.fsdp import shard_denoiser
        from simpletuner.families.pixart_sigma import PixArtSigmaFamily

        dist.init_process_group("nccl")
        config = SimpleNamespace(fsdp_enable=True, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                 fsdp_transformer_layer_cls_to_wrap=None, fsdp_reshard_after_forward=True,
                                 fsdp_cpu_offload=False)
        model = shard_denoiser(model.to(device), config, PixArtSigmaFamily(), device, world)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        trained, engine, backward = model, model, lambda loss: loss.backward()
    else:
        from accelerate import Accelerator

        from simpletuner.distributed.deepspeed import deepspeed_plugin

        settings = SimpleNamespace(deepspeed_config=ds_config, train_batch_size=2, gradient_accumulation_steps=1)
        accelerator = Accelerator(mixed_precision="bf16", deepspeed_plugin=deepspeed_plugin(settings))
        trained = model
        engine, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        backward = accelerator.backward
    torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = engine(**_batch(generator, device)).sample.float().pow(2).mean()
        backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    inner = getattr(optimizer, "optimizer", optimizer)
    held = local_bytes(trained.parameters()) + local_bytes(optimizer_tensors(inner))
    print(f"{mode} rank {rank}/{world}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, params+optimizer held {held / 2**20:.0f} MiB",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--worker", choices=("fsdp2", "zero2"))
    parser.add_argument("--ds_config", default="")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.width, args.layers, args.ds_config)
        return
    import torch

    if not torch.cuda.is_available():
        print("this check needs CUDA GPUs; on a CPU-only machine run benchmarks/distributed.py", file=sys.stderr)
        sys.exit(2)
    gpus = args.gpus or torch.cuda.device_count()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as folder:
        ds_config = Path(folder) / "zero2.json"
        ds_config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                                         "train_micro_batch_size_per_gpu": "auto"}), encoding="utf-8")
        failed = False
        for mode in ("fsdp2", "zero2"):
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                       __file__, "--worker", mode, "--steps", str(args.steps), "--width", str(args.width),
                       "--layers", str(args.layers), "--ds_config", str(ds_config)]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            print("\n".join(sorted(line for line in result.stdout.splitlines() if line.startswith(mode))))
            if result.returncode != 0:
                failed = True
                print(f"{mode} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
