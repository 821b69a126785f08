"""--dataloader_prefetch: a worker thread reads the next batches' cache entries
during each step.  It must not change what trains (bitwise on CPU), a resumed
run continues at the same sample, and the worker is gone however the run ends
(last step, a failed read, a signal)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simpletuner.training.prefetch as prefetch
from adapter_harness import train
from family_harness import write_two_class_project
from simpletuner.errors import ConfigError, DataError
from simpletuner.training.batches import CacheLookup
from simpletuner.training.stop import RunStopped, StopSignals

# 6 images in batches of 2: 3 batches an epoch, so 6 steps cross an epoch and
# a checkpoint at step 2 sits mid-epoch, while the worker reads up to 10 ahead.
FLAGS = ("--max_train_steps", "6", "--train_batch_size", "2", "--learning_rate", "1e-3",
         "--caption_dropout_probability", "0.5")
PREFETCH = ("--dataloader_prefetch", "--dataloader_prefetch_qlen", "10")


class _Sampler:
    """A sampler of numbered batches, 3 an epoch, with the real one's state rules."""

    def __init__(self) -> None:
        self.epoch, self.position = 0, 0

    def stream(self):
        while True:
            while self.position < 3:
                self.position += 1
                yield [f"e{self.epoch}b{self.position}"]
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class _Lookup:
    epoch_crops = None

    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    def latents(self, sample: str) -> str:
        self.reads.append((threading.current_thread().name, sample))
        return f"latent of {sample}"


def test_the_loop_takes_batches_in_order_with_the_entries_the_worker_read() -> None:
    config = type("Config", (), {"dataloader_prefetch": True, "dataloader_prefetch_qlen": 2,
                                 "train_text_encoder": True})()
    lookup = _Lookup()
    sampler, staged = prefetch.prefetched(_Sampler(), lookup, config)
    stream = sampler.stream()
    taken = []
    try:
        for _ in range(4):
            [sample] = next(stream)
            taken.append((sample, staged.latents(sample), sampler.state_dict(), sampler.epoch))
        while len(lookup.reads) < 4 + 2:  # the worker fills the queue behind the loop
            threading.Event().wait(0.01)
    finally:
        prefetch.stop_prefetch(sampler)
    assert [t[0] for t in taken] == ["e0b1", "e0b2", "e0b3", "e1b1"]
    assert [t[1] for t in taken] == [f"latent of {t[0]}" for t in taken]
    # The position of the batch taken, not of the worker (which is qlen ahead).
    assert [t[2] for t in taken] == [{"epoch": 0, "position": 1}, {"epoch": 0, "position": 2},
                                     {"epoch": 0, "position": 3}, {"epoch": 1, "position": 1}]
    assert [t[3] for t in taken] == [0, 0, 0, 1]
    # Read off the loop's thread, by the worker's readers.
    assert all(name.startswith(prefetch.WORKER_NAME) for name, _ in lookup.reads), lookup.reads
    assert len(lookup.reads) <= 4 + 2 + 1  # at most qlen ready plus one in hand
    assert not _prefetch_threads()


class _SlowLookup(_Lookup):
    """Reads that take 5 ms each, as from S3."""

    def latents(self, sample: str) -> str:
        threading.Event().wait(0.005)
        return super().latents(sample)


def test_slow_reads_move_to_concurrent_readers_and_keep_the_order() -> None:
    config = type("Config", (), {"dataloader_prefetch": True, "dataloader_prefetch_qlen": 2,
                                 "train_text_encoder": True})()
    lookup = _SlowLookup()
    sampler, staged = prefetch.prefetched(_Sampler(), lookup, config)
    stream = sampler.stream()
    try:
        taken = [(sample, staged.latents(sample)) for [sample] in (next(stream) for _ in range(5))]
    finally:
        prefetch.stop_prefetch(sampler)
    assert [t[0] for t in taken] == ["e0b1", "e0b2", "e0b3", "e1b1", "e1b2"]
    assert [t[1] for t in taken] == [f"latent of {t[0]}" for t in taken]
    readers = [name for name, _ in lookup.reads]
    assert readers[0] == prefetch.WORKER_NAME  # the first batch is read on the worker and timed
    assert all(name.startswith(prefetch.WORKER_NAME + "_") for name in readers[1:])  # then by the pool
    assert not _prefetch_threads()


def test_prefetch_is_refused_with_datasets_that_recrop_every_epoch() -> None:
    lookup = _Lookup()
    lookup.epoch_crops = type("Crops", (), {"samples": {"photos": []}})()
    config = type("Config", (), {"dataloader_prefetch": True})()
    with pytest.raises(ConfigError, match="dataset 'photos' re-encodes its latents at each epoch"):
        prefetch.prefetched(_Sampler(), lookup, config)


def test_prefetch_with_on_demand_latents_is_refused_before_anything_loads(tmp_path: Path) -> None:
    from simpletuner.config.loader import load_config

    with pytest.raises(ConfigError, match="--dataloader_prefetch with --vae_cache_ondemand is not implemented yet"):
        load_config(["--model_family", "sdxl", "--print_config", "--dataloader_prefetch", "--vae_cache_ondemand"],
                    env={}, cwd=tmp_path)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def _assert_bitwise(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefetch.WORKER_NAME)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_class_project(tmp_path_factory.mktemp("prefetch"), per_class=3)


@pytest.fixture(scope="module")
def plain(project: Path, tiny_sdxl: Path) -> Path:
    """The run without prefetch, checkpointing at step 2."""
    train(project, tiny_sdxl, "sdxl", *FLAGS, "--checkpointing_steps", "2", output_name="plain")
    return project / "plain"


@pytest.fixture(scope="module")
def with_prefetch(project: Path, tiny_sdxl: Path) -> tuple[Path, list[str]]:
    """The same run with prefetch; records which thread read each batch."""
    readers: list[str] = []
    read = prefetch._Worker._read

    def recording_read(self, batch):
        readers.append(threading.current_thread().name)
        return read(self, batch)

    prefetch._Worker._read = recording_read
    try:
        train(project, tiny_sdxl, "sdxl", *FLAGS, *PREFETCH, "--checkpointing_steps", "2", output_name="prefetched")
    finally:
        prefetch._Worker._read = read
    return project / "prefetched", readers


@pytest.mark.slow
def test_prefetch_trains_bitwise_the_same_weights(plain: Path, with_prefetch: tuple) -> None:
    folder, readers = with_prefetch
    # The worker really read the batches, ahead of the loop (more than the 6 steps took).
    assert len(readers) > 6 and set(readers) == {prefetch.WORKER_NAME}
    _assert_bitwise(_weights(plain), _weights(folder))
    assert not _prefetch_threads()  # stopped after the last step


@pytest.mark.slow
def test_a_checkpoint_saves_the_position_the_loop_reached(plain: Path, with_prefetch: tuple) -> None:
    folder, _ = with_prefetch
    for step in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        saved = json.loads((folder / step / "sampler.json").read_text())
        assert saved == json.loads((plain / step / "sampler.json").read_text()), step
    assert json.loads((folder / "checkpoint-2" / "sampler.json").read_text())["position"] == 2


@pytest.mark.slow
def test_a_resumed_prefetch_run_continues_at_the_same_sample(project: Path, tiny_sdxl: Path, plain: Path,
                                                             with_prefetch: tuple) -> None:
    folder, _ = with_prefetch
    train(project, tiny_sdxl, "sdxl", *FLAGS, *PREFETCH, "--checkpointing_steps", "100",
          "--resume_from_checkpoint", str(folder / "checkpoint-2"), output_name="resumed")
    _assert_bitwise(_weights(plain), _weights(project / "resumed"))


@pytest.mark.slow
def test_a_failed_read_stops_the_run_with_its_error_and_the_worker(project: Path, tiny_sdxl: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads from the 5th latent on fail, as a cache file deleted mid-run would.
    latents = CacheLookup.latents
    calls = [0]

    def failing(self, sample):
        calls[0] += 1
        if calls[0] > 4:
            raise DataError(f"dataset '{sample.dataset_id}': latent cache entry is missing (test)")
        return latents(self, sample)

    monkeypatch.setattr(CacheLookup, "latents", failing)
    steps: list[int] = []
    with pytest.raises(DataError, match="latent cache entry is missing"):
        trainer, _ = train(project, tiny_sdxl, "sdxl", *FLAGS, *PREFETCH, output_name="failed")
    # The worker stopped at the failed read's batch (batch size 2: its two entries are read together).
    assert calls[0] in (5, 6)
    assert not (project / "failed" / "pytorch_lora_weights.safetensors").exists()
    assert not _prefetch_threads()


@pytest.mark.slow
def test_a_signal_stops_the_worker_and_the_checkpoint_is_where_the_loop_was(
        project: Path, tiny_sdxl: Path, plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simpletuner.training.trainer import Trainer

    after_step = Trainer._after_step

    def signalling(self, *args):
        after_step(self, *args)
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2's bookkeeping

    monkeypatch.setattr(Trainer, "_after_step", signalling)
    original = Trainer.__init__

    def with_handlers(self, config, show_progress=True, stop=None):
        original(self, config, show_progress, stop=handlers)

    monkeypatch.setattr(Trainer, "__init__", with_handlers)
    with StopSignals() as handlers, pytest.raises(RunStopped) as stopped:
        train(project, tiny_sdxl, "sdxl", *FLAGS, *PREFETCH, "--checkpointing_steps", "100",
              output_name="signalled")
    assert stopped.value.step == 2
    assert not _prefetch_threads()
    saved = json.loads((project / "signalled" / "checkpoint-2" / "sampler.json").read_text())
    assert saved == json.loads((plain / "checkpoint-2" / "sampler.json").read_text())


@pytest.mark.slow
def test_ctrl_c_through_train_sh_exits_130_with_the_worker_gone(tmp_path: Path, tiny_sdxl: Path) -> None:
    import re
    import subprocess
    import time

    from train_sh import kill_tree, start_train_sh, tiny_project, user_env

    root = tiny_project(tmp_path, tiny_sdxl, max_train_steps=40, checkpointing_steps=100, train_batch_size=1,
                        dataloader_prefetch=True, dataloader_prefetch_qlen=4)
    log = tmp_path / "console"
    process = start_train_sh(root, log, env=user_env(SIMPLETUNER_PROGRESS="lines"))
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"INFO step \d+/40", log.read_text(errors="replace")):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole job
        assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    except (AssertionError, subprocess.TimeoutExpired):
        kill_tree(process)
        raise
    console = log.read_text()
    assert "Traceback" not in console and "dataloader prefetch: keeping up to 4 batches ready" in console
    [step] = re.findall(r"stopped after step (\d+), saved as checkpoint-\d+", console)
    assert 1 <= int(step) < 40, "the signal did not land mid-training"


@pytest.mark.slow
def test_a_cache_file_gone_mid_run_exits_2_in_one_line_as_without_prefetch(tmp_path: Path, tiny_sdxl: Path) -> None:
    from train_sh import tiny_project, train_sh

    root = tiny_project(tmp_path, tiny_sdxl, max_train_steps=8, train_batch_size=1, dataloader_prefetch=True)
    cached = train_sh(root, "--cache_only")
    assert cached.returncode == 0, cached.stderr[-3000:]
    entries = sorted((root / "cache" / "vae").rglob("*.safetensors*"))
    assert len(entries) == 8
    entries[3].unlink()
    result = train_sh(root, "--skip_file_discovery", "vae")  # trust the cache: nothing re-encodes the entry
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "latent cache entry for" in line]
    assert len(errors) == 1 and "is missing or unreadable" in errors[0], result.stderr[-3000:]
