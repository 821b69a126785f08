"""DDP against FSDP2 on 1 and 2 CPU processes: speed, memory per process, and the sharding ratio.

Usage::

    python benchmarks/distributed.py [--steps N] [--width W] [--layers L] [--batch B] [--processes 1,2]

Prints one line per (processes, mode): step time, samples/s, per-process
peak RSS and the bytes of parameters + optimizer state each process holds,
then, last, exactly ``fsdp_memory_ratio: R``: per-process parameter +
optimizer bytes under FSDP2 over DDP with 2 processes (target <= 0.55).

What runs
---------
A tiny-but-wide PixArt transformer (``L`` BasicTransformerBlocks of width
``W``, 16 tokens per sample: little compute, many weights), trained with
AdamW on random inputs for ``N`` measured steps after 2 warm-up steps, in
``torch.distributed.run`` workers over gloo, one thread each:

* **ddp**: the model in torch's DistributedDataParallel (what accelerate does
  for a multi-process run);
* **fsdp**: ``simpletuner.distributed.fsdp.shard_denoiser``, the trainer's
  own FSDP2 path (one shard group per BasicTransformerBlock, as
  --fsdp_enable does for PixArt); with one process it leaves the model whole.

Held bytes are measured from each process's local tensors (a DTensor's local
shard).  Peak RSS includes building the whole model in every process before
sharding (as a run without --fsdp_cpu_ram_efficient_loading does), so it falls by less
than the held bytes do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def _model(width: int, layers: int) -> "torch.nn.Module":
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=width // 64, attention_head_dim=64, in_channels=4, out_channels=8,
        num_layers=layers, cross_attention_dim=width, caption_channels=64, sample_size=8,
        patch_size=2, norm_type="ada_norm_single", use_additional_conditions=False,
    )


def worker(mode: str, steps: int, width: int, layers: int, batch: int, results: Path) -> None:
    import torch
    import torch.distributed as dist

    from simpletuner.distributed.fsdp import local_bytes, optimizer_tensors, shard_denoiser

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    model = _model(width, layers)
    if mode == "fsdp":
        config = SimpleNamespace(fsdp_enable=True, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                 fsdp_transformer_layer_cls_to_wrap=None, fsdp_reshard_after_forward=True,
                                 fsdp_cpu_offload=False)
        from simpletuner.families.pixart_sigma import PixArtSigmaFamily

        model = shard_denoiser(model, config, PixArtSigmaFamily(), torch.device("cpu"), world)
        trained = model
    else:
        trained = model
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(rank)
    times = []
    for number in range(steps + 2):
        latents = torch.randn(batch, 4, 8, 8, generator=generator)
        text = torch.randn(batch, 8, 64, generator=generator)
        started = time.perf_counter()
        output = model(latents, encoder_hidden_states=text, timestep=torch.full((batch,), 500),
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        output.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if number >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    held = local_bytes(trained.parameters()) + local_bytes(optimizer_tensors(optimizer))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # One file per rank: the ranks' stdout lines can interleave in the launcher's pipe.
    (results / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "step_time": statistics.median(times),
                                                          "held_bytes": held, "peak_rss": peak_rss}))
    # Leave as train.py does: tearing down FSDP2 and a gloo group at interpreter exit
    # aborts the process now and then. The figures are written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(processes: int, mode: str, args: argparse.Namespace) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as results:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   __file__, "--worker", mode, "--steps", str(args.steps), "--width", str(args.width),
                   "--layers", str(args.layers), "--batch", str(args.batch), "--results", results]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{mode} with {processes} process(es) failed:\n{result.stderr[-3000:]}")
        ranks = [json.loads(path.read_text()) for path in sorted(Path(results).glob("rank*.json"))]
    if len(ranks) != processes:
        sys.exit(f"{mode} with {processes} process(es): {len(ranks)} of them reported figures")
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--processes", default="1,2", help="process counts to run, comma-separated (2 is needed "
                        "for the ratio)")
    parser.add_argument("--worker", choices=("ddp", "fsdp"))
    parser.add_argument("--results", type=Path, help="(workers) the folder each rank writes its figures to")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.width, args.layers, args.batch, args.results)
        return
    held: dict[tuple[int, str], int] = {}
    for processes in sorted({int(n) for n in args.processes.split(",")} | {2}):
        for mode in ("ddp", "fsdp"):
            ranks = _launch(processes, mode, args)
            step_time = max(r["step_time"] for r in ranks)  # the slowest process sets the pace
            held[processes, mode] = max(r["held_bytes"] for r in ranks)
            print(f"{processes} process(es) {mode:4s}: step {step_time:.3f} s, "
                  f"{args.batch * processes / step_time:.1f} samples/s, peak RSS per process "
                  f"{max(r['peak_rss'] for r in ranks) / 2**20:.0f} MiB, params+optimizer per process "
                  f"{held[processes, mode] / 2**20:.0f} MiB", flush=True)
    print(f"fsdp_memory_ratio: {held[2, 'fsdp'] / held[2, 'ddp']:.3f}")


if __name__ == "__main__":
    main()
