"""One process of the DCP resharding test (tests/test_fsdp_checkpoints.py), started by torchrun.

``save FOLDER``: train a small two-layer model (FSDP2-sharded over the
processes when there are several) for 3 steps, write checkpoint-3 with the
trainer's checkpoint writer, then take a 4th step; the main process writes
the gathered weights and optimizer state after steps 3 and 4 as references.
(``save-async``/``save-full``: the same with --fsdp_async_checkpointing or
--fsdp_state_dict_type full.)
``load FOLDER``: build the model anew, load checkpoint-3 and record the
gathered state, take the 4th step and record it again (the test compares).
Several ``MODE FOLDER`` pairs run one after the other in one launch, each with
a model and writer of its own: starting torchrun and importing torch in every
process is most of the cost, so the test shares launches between its cases.
Every process trains on the same batch, so the averaged gradient is the
single-process one and any process count must give the same numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from simpletuner.distributed.dcp import ShardedCheckpoints, model_and_optimizer_state
from simpletuner.distributed.fsdp import shard_denoiser


class Accelerator:
    """What the checkpoint writer asks of accelerate."""

    def __init__(self) -> None:
        self.num_processes = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main_process = not dist.is_initialized() or dist.get_rank() == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    world = dist.get_world_size() if dist.is_initialized() else 1
    config = SimpleNamespace(fsdp_enable=True, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                             fsdp_transformer_layer_cls_to_wrap=["Linear"], fsdp_reshard_after_forward=True,
                             fsdp_cpu_offload=False)
    model = shard_denoiser(model, config, None, torch.device("cpu"), world)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, number: int) -> None:
    generator = torch.Generator().manual_seed(number)
    inputs, target = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    torch.nn.functional.mse_loss(model(inputs), target).backward()
    optimizer.step()
    optimizer.zero_grad()


def gathered(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A copy: unsharded state dicts share memory with the live weights, which the next step changes."""
    return _copied(model_and_optimizer_state(model, optimizer, full=True))


def _copied(tree: object) -> object:
    if isinstance(tree, dict):
        return {key: _copied(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_copied(value) for value in tree]
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def run(mode: str, folder: Path) -> None:
    accelerator = Accelerator()
    model, optimizer = build()
    writer = ShardedCheckpoints(accelerator, folder, "full" if mode == "save-full" else "sharded",
                                asynchronous=mode == "save-async", total_limit=None)
    if mode.startswith("save"):
        for number in range(1, 4):
            step(model, optimizer, number)
        writer.save(3, model, optimizer, lambda part_folder: None)
        writer.finish()
        reference = gathered(model, optimizer)
        step(model, optimizer, 4)
        after = gathered(model, optimizer)
        if accelerator.is_main_process:
            torch.save({"step3": reference, "step4": after}, folder / "reference.pt")
    else:
        writer.load(model, optimizer, folder / "checkpoint-3")
        loaded = gathered(model, optimizer)
        step(model, optimizer, 4)
        after = gathered(model, optimizer)
        if accelerator.is_main_process:
            torch.save({"step3": loaded, "step4": after}, folder / f"loaded-{accelerator.num_processes}.pt")


def main(jobs: list[str]) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    for mode, folder in zip(jobs[::2], jobs[1::2], strict=True):
        run(mode, Path(folder))
    # Leave as train.py does: on gloo, FSDP2's hooks and the process group torn down at
    # interpreter exit abort the process now and then ("terminate called without an
    # active exception", about 1 run in 6 here). Everything worth keeping is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
