"""Ranks that never hang: a differing data plan, a dead peer and a silent peer each end in one clear error.

The collectives run in real gloo process groups of two processes
(torch.multiprocessing), as the trainer's do; the digests come from real
data plans built from folders on disk.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from simpletuner.errors import DataError
from simpletuner.training.rank_health import (
    LostContact,
    check_agreement,
    data_plan_digest,
    disagreement,
    lost_contact_reported,
)
from train_sh import tiny_project

TIMEOUT_S = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, scenario: str, digests: list, results: Any) -> None:
    from datetime import timedelta

    import torch

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=TIMEOUT_S))
    started = time.monotonic()
    try:
        if scenario == "plan":
            check_agreement(digests[rank])
        elif rank == 1:  # the peer that fails: dies at once, or stays alive and never answers
            if scenario == "dead":
                os._exit(9)
            time.sleep(TIMEOUT_S * 4)
            os._exit(0)
        else:
            config = SimpleNamespace(distributed_timeout=TIMEOUT_S)
            with lost_contact_reported(config, env={"WORLD_SIZE": "2", "RANK": "0"}):
                dist.all_reduce(torch.ones(4))
        results.put((rank, "ok", "", time.monotonic() - started))
    except Exception as error:  # reported to the test, which checks type and message
        results.put((rank, type(error).__name__, str(error), time.monotonic() - started))
    results.close()
    results.join_thread()  # the report is sent before the hard exit below
    os._exit(0)  # leave without tearing down a group whose peer may be gone


def _run_pair(scenario: str, digests: list | None = None) -> dict[int, tuple]:
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, port, scenario, digests, results))
                 for port in [_free_port()] for rank in range(2)]
    for process in processes:
        process.start()
    expected = 2 if scenario == "plan" else 1
    reported = dict((rank, rest) for rank, *rest in (results.get(timeout=60) for _ in range(expected)))
    for process in processes:
        process.terminate()  # a silent peer is still asleep: its part is done
        process.join(timeout=60)
    return reported


def _digest(steps: int = 8, files: str = "aaaa") -> dict:
    return {"total steps": steps, "batches per epoch": 4, "images per bucket": {"pics": {"64x64": 8}}, "files": files}


@pytest.mark.slow
def test_ranks_that_agree_go_on() -> None:
    reported = _run_pair("plan", [_digest(), _digest()])
    assert reported == {0: ["ok", "", reported[0][2]], 1: ["ok", "", reported[1][2]]}


@pytest.mark.slow
def test_a_rank_with_another_plan_stops_every_rank_with_the_same_message() -> None:
    reported = _run_pair("plan", [_digest(), _digest(steps=9, files="bbbb")])
    assert [reported[rank][0] for rank in (0, 1)] == [DataError.__name__] * 2
    assert reported[0][1] == reported[1][1]
    message = reported[0][1]
    assert message.startswith("the training processes do not agree on the data plan: rank(s) 1 differ from rank 0")
    assert "total steps (rank 0: 8; rank 1: 9)" in message and "files (rank 0: aaaa; rank 1: bbbb)" in message
    assert "batches per epoch" not in message  # only what differs is named


@pytest.mark.slow
def test_a_dead_peer_ends_the_survivor_with_its_rank_and_the_resume_hint() -> None:
    rank, (kind, message, seconds) = next(iter(_run_pair("dead").items()))
    assert (rank, kind) == (0, LostContact.__name__)
    assert message.startswith("training process 0 of 2 lost contact with the others (")
    assert message.endswith("run again with --resume_from_checkpoint latest to continue from the last checkpoint")
    assert seconds < TIMEOUT_S + 10


@pytest.mark.slow
def test_a_silent_peer_ends_the_survivor_after_the_timeout() -> None:
    rank, (kind, message, seconds) = next(iter(_run_pair("silent").items()))
    assert (rank, kind) == (0, LostContact.__name__), message
    assert f"within --distributed_timeout={TIMEOUT_S}s" in message
    assert TIMEOUT_S - 1 <= seconds < TIMEOUT_S + 10  # it waited for the timeout, and no longer


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ZeroDivisionError):
        with lost_contact_reported(SimpleNamespace(distributed_timeout=5), env={"WORLD_SIZE": "2", "RANK": "1"}):
            1 / 0
    with pytest.raises(RuntimeError):  # one process: nothing to lose contact with
        with lost_contact_reported(SimpleNamespace(distributed_timeout=5), env={"WORLD_SIZE": "1"}):
            raise RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:1] Read error")


# -- digests of real data plans ----------------------------------------------
def _plan(root: Path, model: Path, images: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    from simpletuner.config.loader import load_config
    from simpletuner.data.pipeline import load_backends, prepare_training_data

    tiny_project(root, model, images=images)
    monkeypatch.chdir(root)  # the dataset paths are relative to the project folder
    config = load_config([], env={}, cwd=root)
    data = prepare_training_data(config, load_backends(config), 2, False)
    return data_plan_digest(data, total_steps=10)


def test_the_digest_ignores_where_the_data_is_mounted_but_not_what_it_holds(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there, more = (_plan(tmp_path / name, tiny_sdxl, images, monkeypatch) for name, images in
                         (("here", 8), ("there", 8), ("more", 10)))
    assert here == there
    assert disagreement([here, there]) is None
    message = disagreement([here, there, more])
    assert message is not None and "rank(s) 2 differ" in message
    assert "images per bucket" in message and "files" in message
