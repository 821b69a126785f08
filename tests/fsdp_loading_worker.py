"""One process of the --fsdp_cpu_ram_efficient_loading test (tests/test_fsdp_loading.py), started by torchrun.

``python fsdp_loading_worker.py OUT FAMILY:MODEL_TYPE:FOLDER:CONFIG_ONLY_FOLDER ...``: for each
family, the main process loads from FOLDER; every other process is pointed at
CONFIG_ONLY_FOLDER, a copy of the model folder without any weight file, so
reading a weight there fails.  Each process builds the denoiser as the
trainer's step 5 does (efficient_loading.load_denoiser, the adapter,
shard_denoiser) with the option on, then the reference the ordinary way (every
process reads FOLDER, option off), and writes OUT/rank-R.json: per family,
the parameters and buffers (persistent or not) whose local values differ from
the reference's, and the names it compared.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from simpletuner.config.loader import load_config
from simpletuner.distributed import efficient_loading
from simpletuner.distributed.fsdp import shard_denoiser
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.training.precision import seed_process
from simpletuner.training.trainable import trainable_for


def build(family_name: str, model_type: str, folder: str, efficient: bool) -> torch.nn.Module:
    flags = ["--fsdp_enable", "--fsdp_cpu_ram_efficient_loading"] if efficient else ["--fsdp_enable"]
    config = load_config(["--model_family", family_name, "--model_type", model_type,
                          "--pretrained_model_name_or_path", folder, "--print_config", *flags], env={}, cwd=Path(folder).parent)
    family = get_family(config.model_family, config)
    source = ModelSource.from_config(config, family)
    trainable = trainable_for(config, family)
    seed_process(0)  # as the trainer does: every process starts the adapter alike
    denoiser = efficient_loading.load_denoiser(family, source, config, torch.device("cpu"),
                                               trainable.frozen_dtype(torch.float32), dist.get_rank() == 0,
                                               dist.get_world_size())
    trainable.prepare(denoiser)
    denoiser.train()
    return shard_denoiser(denoiser, config, family, torch.device("cpu"), dist.get_world_size())


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def compare(family_name: str, model_type: str, folder: str, config_only: str) -> dict:
    mine = folder if dist.get_rank() == 0 else config_only
    built = build(family_name, model_type, mine, True)
    reference = build(family_name, model_type, folder, False)
    persistent = set(reference.state_dict().keys())
    expected = dict(reference.named_parameters()) | dict(reference.named_buffers())
    got = dict(built.named_parameters()) | dict(built.named_buffers())
    differ = sorted(name for name, value in expected.items()
                    if name not in got or not torch.equal(local(got[name]), local(value)))
    return {
        "differ": differ,
        "parameters": sorted(n for n, _ in reference.named_parameters()),
        "trained": sorted(n for n, p in built.named_parameters() if p.requires_grad),
        "buffers": {n: n in persistent for n, _ in reference.named_buffers()},
        "meta": sorted(n for n, t in got.items() if t.is_meta),
    }


def main(out: Path, specs: list[str]) -> None:
    dist.init_process_group("gloo")
    report = {}
    for spec in specs:
        family_name, model_type, folder, config_only = spec.split(":")
        report[family_name] = compare(family_name, model_type, folder, config_only)
    (out / f"rank-{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.barrier()
    # Leave as train.py does: FSDP2 + gloo torn down at interpreter exit aborts now and then.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
