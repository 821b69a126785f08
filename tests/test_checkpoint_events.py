"""The "checkpoint saved" event (webhooks, Hub push) fires once per checkpoint, when its folder is complete.

An ``--fsdp_async_checkpointing`` checkpoint is written in the background and
renamed into place later (after a step, before the next checkpoint, or at the
end of the run); it must be reported then, with its final folder, and a write
that fails must never be reported.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from family_harness import write_two_class_project
from hub_server import FakeHub
from webhook_receiver import WebhookReceiver

HUB_TOKEN = "hf_PlantedHubToken0123456789"
REPO = "tester/async-ckpt"


class _OneProcess:
    """What the checkpoint writer asks of accelerate, for one process without a process group."""

    num_processes = 1
    is_main_process = True
    device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _complete(folder: Path) -> bool:
    return (folder / "sharded" / ".metadata").is_file() and (folder / "sharded" / "__0_0.distcp").is_file()


def test_an_async_checkpoint_is_reported_when_published_and_only_then(tmp_path: Path) -> None:
    from simpletuner.distributed.dcp import ShardedCheckpoints

    writer = ShardedCheckpoints(_OneProcess(), tmp_path, "sharded", asynchronous=True, total_limit=None)
    model, optimizer = _model_and_optimizer()
    reported: list[tuple[Path, bool]] = []
    writer.save(1, model, optimizer, lambda folder: None, lambda folder: reported.append((folder, _complete(folder))))
    assert writer.pending is not None and reported == []  # still being written: nothing to report yet
    writer.finish()
    writer.finish()  # nothing pending any more: not reported twice
    assert reported == [(tmp_path / "checkpoint-1", True)]


@pytest.mark.parametrize("state_dict_type", ["sharded", "full"])
def test_a_synchronous_dcp_checkpoint_is_reported_once_during_the_save(tmp_path: Path, state_dict_type: str) -> None:
    from simpletuner.distributed.dcp import ShardedCheckpoints

    writer = ShardedCheckpoints(_OneProcess(), tmp_path, state_dict_type, asynchronous=False, total_limit=None)
    model, optimizer = _model_and_optimizer()
    reported: list[tuple[Path, bool]] = []
    writer.save(2, model, optimizer, lambda folder: None, lambda folder: reported.append((folder, _complete(folder))))
    writer.finish()
    assert reported == [(tmp_path / "checkpoint-2", True)]


def test_a_failed_background_write_is_never_reported(tmp_path: Path) -> None:
    from simpletuner.distributed.dcp import ShardedCheckpoints, _Pending

    writer = ShardedCheckpoints(_OneProcess(), tmp_path, "sharded", asynchronous=True, total_limit=None)
    failed: Future = Future()
    failed.set_exception(OSError("No space left on device"))
    partial = tmp_path / ".checkpoint-1.partial"
    (partial / "sharded").mkdir(parents=True)  # the main process's parts, written before the shards failed
    (partial / "trainer_state.json").write_text("{}")
    reported: list[Path] = []
    writer.pending = _Pending(failed, partial, tmp_path / "checkpoint-1", reported.append)
    with pytest.raises(OSError, match="No space left"):
        writer.finish()
    assert reported == [] and not (tmp_path / "checkpoint-1").exists()


@pytest.mark.slow
def test_async_fsdp_checkpoints_reach_webhooks_and_hub_once_each_when_complete(
        tmp_path: Path, tiny_sdxl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process with --fsdp_enable writes DCP checkpoints; three of them, each written in the background."""
    import huggingface_hub.constants
    from accelerate.state import AcceleratorState

    from simpletuner.cli.train import main

    root = write_two_class_project(tmp_path, per_class=2)
    output = root / "output"
    seen_at_post: dict[int, bool] = {}

    def on_post(body: dict) -> None:  # the trainer waits for this reply, so the folder is as it was then
        if body.get("event") == "checkpointed":
            folder = next(output.rglob(f"checkpoint-{body['step']}"), None)
            seen_at_post[body["step"]] = folder is not None and _complete(folder) and \
                (folder / "trainer_state.json").is_file()

    hub, hooks = FakeHub(HUB_TOKEN), WebhookReceiver(on_json=on_post)
    (root / "webhooks.json").write_text(json.dumps({"webhook_type": "raw", "callback_url": f"{hooks.url}/raw"}))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the loopback Hub serves LFS
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        code = main(["--model_family", "sdxl", "--pretrained_model_name_or_path", str(tiny_sdxl),
                     "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(output),
                     "--mixed_precision", "no", "--seed", "0", "--train_batch_size", "2", "--max_train_steps", "3",
                     "--checkpointing_steps", "1", "--fsdp_enable", "--fsdp_async_checkpointing",
                     "--webhook_config", str(root / "webhooks.json"),
                     "--push_to_hub", "--push_checkpoints_to_hub", "--hub_model_id", REPO, "--hub_token", HUB_TOKEN,
                     # Riding along (a run costs ~10 s): a refiner-layout option on a base-layout model.
                     "--data_aesthetic_score", "6.5"])
    finally:
        hooks.stop()
        hub.stop()
    assert code == 0
    events = [(p.json["event"], p.json.get("step")) for p in hooks.on("/raw")]
    assert sorted(step for event, step in events if event == "checkpointed") == [1, 2, 3], events
    assert seen_at_post == {1: True, 2: True, 3: True}  # each posted once its folder was in place, complete
    log = next(output.rglob("debug.log")).read_text()
    assert log.count("--data_aesthetic_score=6.5 has no effect: the model is in SDXL base's layout") == 1
    messages = [c.message for c in hub.state.commits]
    files = hub.files(REPO)
    for step in (1, 2, 3):
        assert messages.count(f"SimpleTuner: checkpoint-{step}") == 1, messages
        for part in ("sharded/.metadata", "sharded/__0_0.distcp", "trainer_state.json", "sampler.json"):
            assert f"checkpoints/checkpoint-{step}/{part}" in files, sorted(files)
