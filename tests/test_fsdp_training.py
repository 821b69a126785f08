"""FSDP2 through train.sh with two CPU processes (gloo), and its option checks.

The full fine-tune must follow the DDP run (same losses, same weights up to
float rounding) while each process holds about half of the parameters and
optimizer state; a LoRA trains on a sharded base; the final weights are a
normal diffusers folder / LoRA file; a checkpoint written by two processes
resumes with one and back with two, keeping the step, the learning-rate
schedule, the data position and the count of samples seen.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.training.state_files import read_state
from train_sh import run_train_sh, tiny_project

SHARD_LINE = re.compile(r"FSDP2 rank (\d) holds parameters (\d+) of (\d+) bytes, optimizer state (\d+) of (\d+) bytes")
LOSS_LINE = re.compile(r"step (\d+)/\d+ \(\d+%\)\s+loss ([0-9.]+)")


def _processes(root: Path, count: int) -> None:
    env = root / "config" / "config.env"
    env.write_text(re.sub(r"TRAINING_NUM_PROCESSES=\d+", f"TRAINING_NUM_PROCESSES={count}",
                          env.read_text(encoding="utf-8")), encoding="utf-8")


def _losses(stderr: str) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in LOSS_LINE.findall(stderr)}


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next((folder / "unet").glob("*.safetensors")))


# ---------------------------------------------------------------- option checks


@pytest.mark.parametrize("flags, message", [
    (["--fsdp_enable", "--fsdp_version", "1"], "--fsdp_version 1 is not implemented yet"),
    (["--fsdp_enable", "--use_ema"], "--fsdp_enable with --use_ema is not implemented yet"),
    (["--fsdp_enable", "--validation_prompt", "a cat"], "--fsdp_enable with validation images is not implemented"),
    (["--fsdp_enable", "--fused_qkv_projections"], "--fsdp_enable with --fused_qkv_projections is not implemented"),
    (["--fsdp_enable", "--deepspeed_config", "ds.json"], "choose one of them"),
    (["--fsdp_enable", "--fsdp_cpu_ram_efficient_loading", "--model_type", "lora", "--lora_init_type", "pissa"],
     "--fsdp_cpu_ram_efficient_loading with --lora_init_type pissa: that initialisation is computed from the base"),
])
def test_fsdp_refuses_what_it_cannot_do(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["--model_family", "sdxl", "--print_config", *flags], env={}, cwd=tmp_path)


def test_fsdp_options_are_read(tmp_path: Path) -> None:
    config = load_config(["--model_family", "sdxl", "--print_config", "--fsdp_enable", "--fsdp_state_dict_type",
                          "FULL_STATE_DICT", "--fsdp_transformer_layer_cls_to_wrap", "BasicTransformerBlock"],
                         env={}, cwd=tmp_path)
    assert config.fsdp_enable and config.fsdp_version == 2 and config.fsdp_state_dict_type == "full"
    assert config.fsdp_transformer_layer_cls_to_wrap == ["BasicTransformerBlock"]
    assert config.fsdp_min_num_params == 100_000_000  # accelerate's default
    config = load_config(["--model_family", "sdxl", "--print_config", "--fsdp_enable", "--fsdp_cpu_ram_efficient_loading",
                          "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "5000"],
                         env={}, cwd=tmp_path)
    assert config.fsdp_cpu_ram_efficient_loading and config.fsdp_auto_wrap_policy == "SIZE_BASED_WRAP"
    assert config.fsdp_min_num_params == 5000


def test_size_based_wrap_groups_what_reaches_the_threshold_deepest_first() -> None:
    from torch import nn

    from simpletuner.distributed.fsdp import size_based_groups

    small = nn.Linear(10, 10)                         # 110 parameters: below 200, not searched
    pair = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))  # 220 together: one group
    big = nn.Linear(20, 20)                           # 420: a group of its own ...
    holder = nn.Sequential(big, nn.Linear(10, 10), nn.Linear(10, 10))  # ... and 220 left over: a group after it
    listed = nn.ModuleList([nn.Linear(10, 10), nn.Linear(10, 10)])  # 220, but containers are never wrapped
    root = nn.Sequential(small, pair, holder, listed, nn.Linear(2, 2))
    assert size_based_groups(root, 200) == [pair, big, holder]
    assert size_based_groups(root, 300) == [big]          # holder's 220 left over is too few now
    assert size_based_groups(root, 421) == [holder]       # big alone is too few; with its siblings, 640
    assert size_based_groups(root, 641) == []             # nothing reaches it: the root alone (like NO_WRAP)
    # Every leaf; no parent keeps a parameter of its own, so none becomes a group.
    assert size_based_groups(root, 1) == [small, *pair, *holder, *listed, root[4]]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the refusal is for machines without a GPU")
def test_deepspeed_is_refused_without_a_gpu_pointing_at_fsdp(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(["--model_family", "sdxl", "--print_config", "--deepspeed_config", "ds.json"],
                    env={}, cwd=tmp_path)
    assert str(raised.value).count("\n") == 0
    assert "--deepspeed_config needs a GPU" in str(raised.value) and "--fsdp_enable" in str(raised.value)


# ---------------------------------------------------------------- two processes


@pytest.mark.slow
def test_full_fine_tune_follows_ddp_with_half_the_memory(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = tiny_project(tmp_path, tiny_sdxl, model_type="full", learning_rate=1e-4, max_train_steps=4,
                        checkpointing_steps=2)
    _processes(root, 2)
    ddp = run_train_sh(root, "--output_dir", "ddp")
    fsdp = run_train_sh(root, "--output_dir", "fsdp", "--fsdp_enable")
    assert "sharded over 2 processes" in fsdp.stderr and "sharded over" not in ddp.stderr

    # The same loss curve and, after 4 steps, the same weights up to float rounding.
    assert _losses(ddp.stderr).keys() == _losses(fsdp.stderr).keys() == {1, 4}
    for step, loss in _losses(ddp.stderr).items():
        assert _losses(fsdp.stderr)[step] == pytest.approx(loss, abs=1e-4)
    base, ddp_unet, fsdp_unet = _unet(tiny_sdxl), _unet(root / "ddp"), _unet(root / "fsdp")
    assert ddp_unet.keys() == fsdp_unet.keys()
    assert max((ddp_unet[k] - base[k]).abs().max().item() for k in base) > 1e-4  # it trained
    assert max((ddp_unet[k] - fsdp_unet[k]).abs().max().item() for k in base) < 1e-5

    # Each process held half of the parameters and of the optimizer state.
    shares = SHARD_LINE.findall(fsdp.stderr)
    assert sorted(int(s[0]) for s in shares) == [0, 1]
    for _, params, params_whole, state, state_whole in shares:
        assert 0.45 < int(params) / int(params_whole) < 0.55
        assert 0.45 < int(state) / int(state_whole) < 0.55
    assert sum(int(s[1]) for s in shares) >= int(shares[0][2])  # between them, all of it

    # Only the main process reading the weights, and groups by size: the same run.  Loading
    # alone gives the same shards bit for bit (tests/test_fsdp_loading.py) and, checked by
    # hand, the same trained weights; other groups place the gathered weights elsewhere in
    # memory and the trained weights then differ at float rounding (1.2e-7 measured).
    from diffusers import UNet2DConditionModel

    from simpletuner.distributed.fsdp import size_based_groups

    lean = run_train_sh(root, "--output_dir", "lean", "--fsdp_enable", "--fsdp_cpu_ram_efficient_loading",
                        "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "100000")
    assert lean.stderr.count("UNet2DConditionModel built empty") == 1  # the other process, not the main one
    groups = len(size_based_groups(UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet"), 100_000))
    assert 1 < groups < 12  # not the 12 blocks TRANSFORMER_BASED_WRAP makes, nor none
    assert f"in {groups} block group(s) and the root (SIZE_BASED_WRAP)" in lean.stderr
    assert "in 12 block group(s) and the root (TRANSFORMER_BASED_WRAP)" in fsdp.stderr
    assert _losses(lean.stderr) == _losses(fsdp.stderr)
    lean_unet = _unet(root / "lean")
    assert lean_unet.keys() == fsdp_unet.keys()
    assert max((lean_unet[k] - fsdp_unet[k]).abs().max().item() for k in fsdp_unet) < 1e-6

    # A normal diffusers folder, and each process wrote its part of the checkpoint.

    UNet2DConditionModel.from_pretrained(root / "fsdp" / "unet")
    assert (root / "fsdp" / "model_index.json").is_file()
    parts = sorted(p.name for p in (root / "fsdp" / "checkpoint-2" / "sharded").iterdir())
    assert parts == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_lora_on_sharded_base_resumes_with_one_process_and_back(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = tiny_project(tmp_path, tiny_sdxl, fsdp_enable=True, max_train_steps=4, checkpointing_steps=3,
                        lr_scheduler="linear", lr_warmup_steps=0)
    _processes(root, 2)
    # The base read by the main process only; the adapter is added to the empty base elsewhere.
    first = run_train_sh(root, "--fsdp_cpu_ram_efficient_loading")
    assert "sharded over 2 processes" in first.stderr and "built empty" in first.stderr
    saved = json.loads((root / "output" / "checkpoint-3" / "sampler.json").read_text())
    assert (saved["epoch"], saved["position"], saved["world_size"]) == (1, 1, 2)  # 2 batches per epoch per rank

    # 2 -> 1: the epoch's 2 batches taken by two ranks are the first 2 of the single process's 4.
    shutil.copytree(root / "output" / "checkpoint-3", root / "resumed" / "checkpoint-3")
    _processes(root, 1)
    second = run_train_sh(root, "--output_dir", "resumed", "--resume_from_checkpoint", "latest",
                          "--checkpointing_steps", "1")
    assert "resumed from resumed/checkpoint-3 at step 3" in second.stderr
    after = root / "resumed" / "checkpoint-4"
    assert json.loads((after / "trainer_state.json").read_text())["samples_seen"] == 3 * 4 + 2
    sampler = json.loads((after / "sampler.json").read_text())
    assert (sampler["epoch"], sampler["position"]) == (1, 3)
    schedule = read_state(after / "lr_scheduler.safetensors")
    assert schedule["last_epoch"] == 4 and schedule["_last_lr"] == [0.0]  # the linear decay ran to its end

    # 1 -> 2, one more step.
    _processes(root, 2)
    third = run_train_sh(root, "--output_dir", "resumed", "--resume_from_checkpoint", "latest",
                         "--checkpointing_steps", "1", "--max_train_steps", "5")
    assert "resumed from resumed/checkpoint-4 at step 4" in third.stderr
    final_state = json.loads((root / "resumed" / "checkpoint-5" / "trainer_state.json").read_text())
    assert (final_state["global_step"], final_state["samples_seen"]) == (5, 14 + 4)

    # The final LoRA (gathered from the shards) loads as any LoRA does.
    weights = load_file(root / "resumed" / "pytorch_lora_weights.safetensors")
    assert any(".lora_B." in k or ".lora.up." in k for k in weights)
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k or "lora.up" in k) > 0
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipeline.load_lora_weights(root / "resumed")
    loaded = {k: v for k, v in pipeline.unet.state_dict().items() if "lora_B" in k}
    assert loaded and any(v.abs().max().item() > 0 for v in loaded.values())


def test_memory_check_counts_a_share_of_the_sharded_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from simpletuner.memory import report
    from simpletuner.memory.estimate import MemoryEstimate

    gib = 2**30
    estimate = MemoryEstimate(components={}, bucket=(64, 64), batch_size=1, loading=gib, caching=gib,
                              training={"trained weights": 2 * gib, "gradients": 2 * gib,
                                        "optimizer state": 4 * gib, "activations": gib})
    monkeypatch.setattr(report, "estimate_for_run", lambda *args: estimate)
    monkeypatch.setattr(report, "largest_bucket", lambda counts: (64, 64))
    config = SimpleNamespace(skip_memory_check=False, memory_limit_gb=6)
    with pytest.raises(ConfigError, match="memory estimate"):  # 9 GiB whole
        report.check_memory(config, None, None, {}, torch.device("cpu"), log=False)
    report.check_memory(config, None, None, {}, torch.device("cpu"), log=False, shards=2)  # 5 GiB each
