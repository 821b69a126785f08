"""Checkpoints of the model and optimizer with ``torch.distributed.checkpoint``.

Under ``--fsdp_enable`` the trained weights and the optimizer state are saved
as DCP state in ``checkpoint-<step>/sharded/``: each process writes its own
shards (``__<rank>_0.distcp``) and the main process the ``.metadata`` index.
Both are keyed by parameter name, not by process, so a checkpoint loads into
any number of processes (DCP reshards on load) and into an unsharded model.
Everything else (schedule, sampler, random states, counters) is written by
the main process exactly as in a DDP run (training/resume.py).

Publishing is as atomic as a DDP checkpoint's: all files go to a hidden
``.checkpoint-<step>.partial`` folder, and the main process renames it into
place only once every process's part is on disk, so ``latest`` always names a
complete checkpoint.  ``--fsdp_async_checkpointing`` writes the shards from a
background thread after copying them to CPU memory; the rename then happens
when the write has finished (checked after every step, and waited for before
the next checkpoint and at the end of the run).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from simpletuner.distributed.safe_load import safe_planner, safe_reader
from simpletuner.storage.local import move_into_place
from simpletuner.training.checkpoint import list_checkpoints

logger = logging.getLogger(__name__)

SHARDED_FOLDER = "sharded"


def checkpoint_kind(path: Path) -> str:
    """How ``path`` holds the weights and optimizer: "dcp", "deepspeed" or "plain" (one file each)."""
    from simpletuner.distributed.deepspeed import CHECKPOINT_FOLDER

    if (path / SHARDED_FOLDER / ".metadata").is_file():
        return "dcp"
    if (path / CHECKPOINT_FOLDER).is_dir():
        return "deepspeed"
    return "plain"


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def _options(full: bool, strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen base weights (an adapter run's) are not state: the base model has them.
    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)


def model_and_optimizer_state(model: torch.nn.Module, optimizer: Any, full: bool = False) -> dict[str, Any]:
    """Name-keyed state of the trained weights and the optimizer (collective when sharded)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, _inner(optimizer), options=_options(full))
    return {"model": model_state, "optimizer": optimizer_state}


def load_model_and_optimizer(model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Load a checkpoint's ``sharded/`` state, whatever number of processes wrote it (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    # Every trained weight is named here, and dcp.load fails on a name the checkpoint
    # lacks; the frozen ones are left out on purpose, hence strict=False when setting.
    state = model_and_optimizer_state(model, optimizer)
    dcp.load(state, storage_reader=safe_reader(folder / SHARDED_FOLDER), planner=safe_planner())
    set_state_dict(model, _inner(optimizer), model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=_options(False, strict=False))


Published = Callable[[Path], None]


@dataclass
class _Pending:
    future: Any
    temporary: Path
    final: Path
    published: Optional[Published]


class ShardedCheckpoints:
    """Writes a run's checkpoints whose weights and optimizer state every process writes its part of.

    ``kind`` is "dcp" (--fsdp_enable: torch.distributed.checkpoint) or
    "deepspeed" (--deepspeed_config: the engine's own ZeRO checkpoint).  Holds
    the checkpoint whose background write (--fsdp_async_checkpointing) is in flight.
    """

    def __init__(self, accelerator: Any, output_dir: Path, state_dict_type: str, asynchronous: bool,
                 total_limit: Optional[int], kind: str = "dcp") -> None:
        self.kind = kind
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.full = state_dict_type == "full"
        self.asynchronous = asynchronous
        self.total_limit = total_limit
        self.pending: Optional[_Pending] = None
        self._background_group: Any = None

    def save(self, step: int, model: torch.nn.Module, optimizer: Any,
             write_other_parts: Callable[[Path], None], published: Optional[Published] = None) -> Path:
        """Write checkpoint-<step>: shards from every process, the other parts from the main one.

        Collective.  Returns the final folder; with async saving it appears
        there once the background write is done.  ``published(folder)`` is
        called on the main process once the folder is complete and in place
        (during this call, or with async saving from :meth:`poll` or
        :meth:`finish`); never for a write that failed.
        """
        import torch.distributed.checkpoint as dcp

        self.finish()  # one write in flight at a time
        accelerator = self.accelerator
        main = accelerator.is_main_process
        final = self.output_dir / f"checkpoint-{step}"
        temporary = self.output_dir / f".checkpoint-{step}.partial"
        if main:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            write_other_parts(temporary)
        accelerator.wait_for_everyone()
        if self.kind == "deepspeed":
            from simpletuner.distributed.deepspeed import save_engine_state

            save_engine_state(model, temporary)
            self._publish(temporary, final, published)
            return final
        state = model_and_optimizer_state(accelerator.unwrap_model(model), optimizer, full=self.full)
        target = str(temporary / SHARDED_FOLDER)
        if self.full:  # gathered to the main process, which writes it alone
            if main:
                dcp.save(state, checkpoint_id=target, no_dist=True)
        elif self.asynchronous:
            future = dcp.async_save(state, checkpoint_id=target, process_group=self._cpu_group())
            self.pending = _Pending(future, temporary, final, published)
            return final
        else:
            dcp.save(state, checkpoint_id=target)
        self._publish(temporary, final, published)
        return final

    def _cpu_group(self) -> Any:
        """A gloo group for the background write's collectives (created once, by every process).

        async_save needs a CPU backend; on GPUs accelerate's group is nccl only.
        """
        import torch.distributed as dist

        if not dist.is_initialized():
            return None
        if self._background_group is None:
            self._background_group = dist.new_group(backend="gloo")
        return self._background_group

    def load(self, model: Any, optimizer: Any, folder: Path) -> None:
        """The weights and optimizer state of checkpoint ``folder`` (collective)."""
        if self.kind == "deepspeed":
            from simpletuner.distributed.deepspeed import load_engine_state

            load_engine_state(model, folder)
        else:
            load_model_and_optimizer(self.accelerator.unwrap_model(model), optimizer, folder)

    def poll(self) -> None:
        """Publish a background write that has finished (called after every step; collective)."""
        if self.pending is None:
            return
        done = torch.tensor([int(_completion(self.pending.future).done())], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            dist.all_reduce(done, op=dist.ReduceOp.MIN)  # every process's part is written
        if done.item():
            self.finish()

    def finish(self) -> None:
        """Wait for a background write, then publish it (collective)."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        _completion(pending.future).result()
        self._publish(pending.temporary, pending.final, pending.published)

    def _publish(self, temporary: Path, final: Path, published: Optional[Published]) -> None:
        self.accelerator.wait_for_everyone()  # every process's shards are on disk
        if self.accelerator.is_main_process:
            _fsync_tree(temporary)
            move_into_place(temporary, final, self.output_dir / f".{final.name}.replaced")
            if self.total_limit:
                for old in list_checkpoints(self.output_dir)[:-self.total_limit]:
                    doomed = old.with_name(f".{old.name}.deleting")
                    os.replace(old, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
            logger.info("saved checkpoint %s", final)
            if published is not None:  # webhooks, Hub push: only now is the folder there to report
                published(final)
        self.accelerator.wait_for_everyone()


def _completion(future: Any) -> Any:
    """The future that ends when the files are written (async_save may also report staging)."""
    return getattr(future, "upload_completion", future)


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def sharded_checkpoints_for(config: Any, accelerator: Any, output_dir: Path) -> Optional[ShardedCheckpoints]:
    """The run's per-process checkpoint writer under --fsdp_enable (also with one process) or
    --deepspeed_config; None for a plain run (training/resume.py writes those)."""
    if getattr(config, "deepspeed_config", None):
        return ShardedCheckpoints(accelerator, output_dir, "sharded", False, config.checkpoints_total_limit,
                                  kind="deepspeed")
    if not getattr(config, "fsdp_enable", False):
        return None
    return ShardedCheckpoints(accelerator, output_dir, config.fsdp_state_dict_type,
                              config.fsdp_async_checkpointing, config.checkpoints_total_limit)
