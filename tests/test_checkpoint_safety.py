"""Checkpoints cannot run code: state files hold data only, old pickles load only when harmless.

A checkpoint folder can come from someone else.  Today's state files are
safetensors with a JSON skeleton; checkpoints of earlier versions hold
``*.pt`` pickles, which are read with torch's restricted unpickler.  A pickle
that would call anything else is refused with one line (exit 2), and its
payload never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from family_harness import train_in_process, write_two_class_project
from simpletuner.errors import ConfigError
from simpletuner.training.legacy_state import read_legacy_part
from simpletuner.training.optimizers import OPTIMIZERS, build_optimizer, hardware_problem, set_optimizer_mode
from simpletuner.training.state_files import read_state, write_state

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "2", "--learning_rate", "1e-3")


class _Payload:
    """Unpickling this runs ``touch marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": {}, "param_groups": [{"params": [0], "lr": _Payload(marker)}]}, path)


def _to_legacy(folder: Path) -> None:
    """Rewrite a checkpoint's state parts as earlier versions did: torch.save pickles, RNG tuples."""
    for part in ("optimizer", "lr_scheduler", "ema"):
        current = folder / f"{part}.safetensors"
        if current.is_file():
            torch.save(read_state(current), folder / f"{part}.pt")
            current.unlink()
    per_rank = []
    for state in read_state(folder / "rng_state.safetensors")["per_rank"]:
        python, numpy = state["python"], state["numpy"]
        per_rank.append({
            "python": (python["version"], tuple(python["state"]), python["gauss_next"]),
            "numpy": (numpy["bit_generator"], np.array(numpy["keys"], dtype=np.uint32), numpy["pos"],
                      numpy["has_gauss"], numpy["cached_gaussian"]),
            "torch": state["torch"], "trainer_generator": state["trainer_generator"],
        })
    torch.save({"per_rank": per_rank}, folder / "rng_state.pt")
    (folder / "rng_state.safetensors").unlink()


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    weights = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))]
    optimizer = torch.optim.AdamW(weights, lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        for w in weights:
            w.grad = torch.randn_like(w)
        optimizer.step()
    state = optimizer.state_dict()
    state["extra"] = {"nan": float("nan"), "dtype": torch.bfloat16, "size": torch.Size([2, 3]), "none": None}
    write_state(tmp_path / "optimizer.safetensors", state)
    restored = read_state(tmp_path / "optimizer.safetensors")
    assert list(restored["state"]) == [0, 1]  # integer keys stay integers
    assert restored["param_groups"][0]["betas"] == (0.8, 0.95)  # tuples stay tuples
    assert restored["param_groups"][0]["lr"] == 1e-3
    for index, moments in state["state"].items():
        for key, value in moments.items():
            assert restored["state"][index][key].dtype == value.dtype
            assert torch.equal(restored["state"][index][key], value), (index, key)
    extra = restored["extra"]
    assert extra["nan"] != extra["nan"] and extra["dtype"] is torch.bfloat16 and extra["size"] == torch.Size([2, 3])
    assert extra["none"] is None
    torch.optim.AdamW(weights, lr=1e-3).load_state_dict(restored)


def _optimizer_config(name: str) -> SimpleNamespace:
    return SimpleNamespace(
        optimizer=name, adam_weight_decay=1e-2, adam_epsilon=1e-8, optimizer_beta1=None, optimizer_beta2=None,
        optimizer_config=None, lr_warmup_steps=0, explicit=frozenset(),
    )


def _steps(optimizer, weights: list[torch.nn.Parameter], seed: int, count: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=generator).to(w.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if hardware_problem(n) is None])
def test_every_optimizer_continues_bitwise_from_its_state_file(tmp_path: Path, name: str) -> None:
    # 8192 values: large enough for torchao's and bitsandbytes' quantised states to engage.
    start = [torch.randn(8192, generator=torch.Generator().manual_seed(1)), torch.randn(16, 8)]
    weights = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = build_optimizer(weights, _optimizer_config(name), learning_rate=1e-3)
    set_optimizer_mode(optimizer, training=True)
    _steps(optimizer, weights, seed=0, count=2)
    write_state(tmp_path / "optimizer.safetensors", optimizer.state_dict())

    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    restored = build_optimizer(copies, _optimizer_config(name), learning_rate=1e-3)
    restored.load_state_dict(read_state(tmp_path / "optimizer.safetensors"))
    set_optimizer_mode(restored, training=True)
    _steps(optimizer, weights, seed=1, count=2)
    _steps(restored, copies, seed=1, count=2)
    for original, copy in zip(weights, copies):
        assert not torch.equal(original.detach(), start[0] if original.numel() == 8192 else start[1])
        assert torch.equal(original.detach(), copy.detach()), name


def test_a_state_file_naming_an_untrusted_tensor_type_is_refused(tmp_path: Path) -> None:
    tree = {"__st__": "subclass", "class": "os:system", "inner": {}, "context": [], "size": [], "stride": []}
    path = tmp_path / "optimizer.safetensors"
    save_file({}, str(path), metadata={"format": "simpletuner.state", "version": "1", "tree": json.dumps(tree)})
    with pytest.raises(ConfigError, match="os:system is not one SimpleTuner loads"):
        read_state(path)


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pt"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "payload-ran"
    planted = tmp_path / name
    _plant(planted, marker)
    with pytest.raises(ConfigError, match=r"refused: .* would call posix\.system") as refused:
        read_legacy_part(planted)
    assert "\n" not in str(refused.value)
    assert not marker.exists(), "the payload ran"
    # The planted file is a working payload: an unrestricted load does run it.
    torch.load(planted, weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl: Path) -> Path:
    """A 4-step run checkpointed at step 2, in today's format."""
    project = write_two_class_project(tmp_path_factory.mktemp("safety"), per_class=2)
    train_in_process(project, tiny_sdxl, "sdxl", *FLAGS, "--use_ema")
    assert (project / "output" / "checkpoint-2" / "optimizer.safetensors").is_file()
    assert not list((project / "output" / "checkpoint-2").glob("*.pt"))
    return project


@pytest.mark.slow
def test_a_checkpoint_from_an_earlier_version_resumes_exactly(trained: Path, tiny_sdxl: Path) -> None:
    legacy = trained / "legacy" / "checkpoint-2"
    shutil.copytree(trained / "output" / "checkpoint-2", legacy)
    _to_legacy(legacy)
    assert {p.name for p in legacy.glob("*.pt")} == {"optimizer.pt", "lr_scheduler.pt", "ema.pt", "rng_state.pt"}
    train_in_process(trained, tiny_sdxl, "sdxl", *FLAGS, "--use_ema", "--resume_from_checkpoint", "latest",
                     output_name="legacy")
    for weights in ("pytorch_lora_weights.safetensors", "ema/pytorch_lora_weights.safetensors"):
        expected = load_file(trained / "output" / weights)
        actual = load_file(trained / "legacy" / weights)
        for key in expected:
            assert torch.equal(expected[key], actual[key]), (weights, key)


@pytest.mark.slow
def test_train_py_refuses_a_planted_pickle_with_one_line(trained: Path, tiny_sdxl: Path) -> None:
    planted = trained / "planted" / "checkpoint-2"
    shutil.copytree(trained / "output" / "checkpoint-2", planted)
    _to_legacy(planted)
    marker = trained / "payload-ran"
    _plant(planted / "optimizer.pt", marker)
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(tiny_sdxl), "--data_backend_config", "mdb.json", "--output_dir", "planted", "--mixed_precision", "no",
         "--seed", "0", *FLAGS, "--use_ema", "--resume_from_checkpoint", "latest"],
        cwd=trained, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "optimizer.pt: refused" in errors[0] and "posix.system" in errors[0], errors[0]
    assert not marker.exists(), "the payload ran"


@pytest.mark.slow
def test_a_checkpoint_resumed_with_other_options_names_the_ones_it_was_saved_with(trained: Path,
                                                                                   tiny_sdxl: Path) -> None:
    # Each checkpoint keeps its own copy of the options: the output folder's training_config.json
    # is rewritten by the resumed run itself, so it cannot say what the checkpoint needs.
    saved = json.loads((trained / "output" / "checkpoint-2" / "training_config.json").read_text())
    assert saved["lora_rank"] != 2 and saved["use_ema"] is True
    other = trained / "other-rank" / "checkpoint-2"
    shutil.copytree(trained / "output" / "checkpoint-2", other)
    with pytest.raises(ConfigError) as refused:
        train_in_process(trained, tiny_sdxl, "sdxl", *FLAGS, "--use_ema", "--lora_rank", "2",
                         "--resume_from_checkpoint", "latest", output_name="other-rank")
    message = str(refused.value)
    assert "does not fit this run" in message
    assert f"it was saved with --lora_rank={saved['lora_rank']} (this run: 2); resume it with those" in message
    assert "resume_from_checkpoint" not in message.split("does not fit")[1]  # changed by resuming, not named
