"""Keeping the processes of a multi-process run in step, so none waits forever.

Two things make a rank hang: a peer that died (or hangs) in the middle of a
collective, and ranks that disagree about how many steps there are (each then
waits in a collective the others never reach).  The first is bounded by the
process group's timeout (``--distributed_timeout``); the second is caught
before step 0 by comparing a small digest of each rank's data plan.

What happens when a rank dies: accelerate's launcher (torch elastic) stops the
other processes on the same machine at once and names the failed one (see
cli/launch.py); the processes on other machines see their next collective fail
(a closed connection, or the timeout) and stop with :class:`LostContact`.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence

from simpletuner.errors import DataError

RESUME_HINT = "run again with --resume_from_checkpoint latest to continue from the last checkpoint"


def process_group_kwargs(config: Any) -> Any:
    """accelerate's handler that gives the process group ``--distributed_timeout``."""
    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=config.distributed_timeout)
    handler = InitProcessGroupKwargs(timeout=timeout)
    # to_kwargs() leaves out values equal to the class's default (600 s, NCCL's), and
    # torch then applies its own default (30 minutes for gloo): always pass ours,
    # the only field set here.  (accelerate accepts no subclass of the handler.)
    handler.to_kwargs = lambda: {"timeout": timeout}
    return handler


class LostContact(Exception):
    """Another process of the run died or stopped answering; this one cannot go on."""


def lost_contact_message(rank: int, world_size: int, timeout_s: int, error: BaseException) -> str:
    """What a surviving rank says when a collective fails: which rank it is, what failed, how to continue."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    # gloo's text starts with its source location and ends with advice about remote workers.
    first_line = re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\]\s*", "", first_line).split(". ")[0][:200]
    return (f"training process {rank} of {world_size} lost contact with the others ({first_line}): another "
            f"process died or did not answer within --distributed_timeout={timeout_s}s, and its machine's console "
            f"names it; {RESUME_HINT}")


def is_collective_failure(error: BaseException) -> bool:
    """A failed or timed-out collective, as torch reports it for gloo and NCCL."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):  # DistBackendError, DistNetworkError, ...
        return True
    # gloo raises plain RuntimeErrors whose text starts with its source location
    # (".../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error ...").
    return isinstance(error, RuntimeError) and "/gloo/" in str(error)


@contextmanager
def lost_contact_reported(config: Any, env: Optional[dict[str, str]] = None) -> Iterator[None]:
    """Turn a failed collective of a multi-process run into :class:`LostContact` with the message above."""
    env = dict(os.environ) if env is None else env
    world_size = int(env.get("WORLD_SIZE", "1"))
    try:
        yield
    except Exception as error:
        if world_size <= 1 or not is_collective_failure(error):
            raise
        rank = int(env.get("RANK", "0"))
        raise LostContact(lost_contact_message(rank, world_size, config.distributed_timeout, error)) from error


# -- the data plan -------------------------------------------------------------
def data_plan_digest(data: Any, total_steps: int) -> dict[str, Any]:
    """What every rank must agree on: steps, batches per epoch, images per bucket, and which files.

    The file list is hashed on paths inside each dataset, sizes and captions
    (not absolute paths or modification times), so copies of the same data at
    different mount points on different machines agree.
    """
    files = hashlib.sha256()
    for dataset_id, samples in sorted(data.samples.items()):
        for sample in sorted(samples, key=lambda s: s.record.relative_path):
            record = sample.record
            files.update(f"{dataset_id}\0{record.relative_path}\0{record.size_bytes}\0{sample.bucket}\0"
                         f"{record.caption}\n".encode())
    report = data.report
    return {
        "total steps": total_steps,
        "batches per epoch": report.batches_per_epoch,
        "images per bucket": {dataset: {f"{w}x{h}": n for (w, h), n in sorted(buckets.items())}
                              for dataset, buckets in sorted(report.counts.items())},
        "files": files.hexdigest()[:16],
    }


def disagreement(digests: Sequence[dict[str, Any]]) -> Optional[str]:
    """None when every rank's digest equals rank 0's; else a message naming the ranks and what differs."""
    reference = digests[0]
    differing = [rank for rank, digest in enumerate(digests) if digest != reference]
    if not differing:
        return None
    ranks = ", ".join(str(rank) for rank in differing)
    details = []
    for key in reference:
        values = {rank: digests[rank].get(key) for rank in differing if digests[rank].get(key) != reference[key]}
        if values:
            theirs = "; ".join(f"rank {rank}: {_short(value)}" for rank, value in values.items())
            details.append(f"{key} (rank 0: {_short(reference[key])}; {theirs})")
    return (f"the training processes do not agree on the data plan: rank(s) {ranks} differ from rank 0 in "
            f"{', '.join(details)}; every machine must see the same datasets (shared storage, or identical "
            "copies with the same multidatabackend.json) before training can start")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def gather_digests(digest: dict[str, Any], group: Any = None) -> list[dict[str, Any]]:
    """Every rank's digest, in rank order (one small all-gather)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, digest, group=group)
    return gathered


def check_data_plan(data: Any, total_steps: int, num_processes: int) -> None:
    """Before step 0: stop every rank with the same clear DataError when their plans differ (not a hang at step N)."""
    if num_processes > 1:
        check_agreement(data_plan_digest(data, total_steps))


def check_agreement(digest: dict[str, Any], group: Any = None) -> None:
    """Raise DataError on every rank of ``group`` unless all of them hold the same ``digest``."""
    message = disagreement(gather_digests(digest, group))
    if message is not None:
        raise DataError(message)
