"""The memory estimate's trained text encoders (--train_text_encoder) and --fused_qkv_projections,
checked against the real modules: bytes exactly, activations against a real CPU pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simpletuner.config.loader import load_config
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def _config(family: str, model: Path, *extra: str):
    return load_config(["--model_family", family, "--pretrained_model_name_or_path", str(model),
                        "--data_backend_config", "unused.json", "--mixed_precision", "no", *extra], env={}, cwd=REPO)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# LoRA on both SDXL encoders; a full fine-tune of the SD 1.x encoder with some layers frozen.
CASES = [("sdxl", ()), ("legacy", ("--model_type", "full", "--freeze_encoder", "--freeze_encoder_strategy",
                                   "before", "--freeze_encoder_before", "1"))]


@pytest.mark.parametrize("family_name,extra", CASES)
def test_trained_encoders_are_counted_as_the_real_ones_hold_memory(family_name: str, extra: tuple,
                                                                   request: pytest.FixtureRequest) -> None:
    from simpletuner.memory.text_encoders import _LiveSaved, estimate_trained_encoders
    from simpletuner.training.optimizers import build_optimizer
    from simpletuner.training.trained_text_encoders import TrainedTextEncoders

    model = request.getfixturevalue(f"tiny_{family_name}")
    config = _config(family_name, model, "--train_text_encoder", "--train_batch_size", "2", *extra)
    family = get_family(family_name, config)
    source = ModelSource(base=str(model))
    estimate = estimate_trained_encoders(config, family, source, batch_size=2)

    real = TrainedTextEncoders(config, family, source, torch.device("cpu"), total_steps=10)
    trained = real.parameters()
    everything = [p for encoder in real.text.encoders for p in encoder.parameters()]
    assert 0 < len(trained) < len(everything)  # a LoRA, or a full fine-tune with frozen layers
    assert estimate.weights == _bytes(everything)
    assert estimate.trained_parameters == sum(p.numel() for p in trained)
    # What one step holds: the encoding's saved tensors (still held once it returns), then gradients and state.
    live = _LiveSaved({id(p) for p in everything})
    with torch.autograd.graph.saved_tensors_hooks(live.pack, lambda t: t):
        embeds = real.embeds([type("S", (), {"caption": "a cat"})(), type("S", (), {"caption": "a dog"})()],
                             None, torch.float32, step=0)
    assert estimate.activations == live.live_bytes() > 0
    sum(e.float().pow(2).sum() for e in embeds.values()).backward()
    assert estimate.gradients == _bytes(p.grad for p in trained if p.grad is not None) > 0
    optimizer = build_optimizer(trained, config, 1e-4)
    optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim()]
    assert estimate.optimizer_state == _bytes(state) > 0


@pytest.mark.parametrize("optimizer", ["adamw_bf16", "optimi-lion"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimizer_state_takes_the_width_of_the_parameters_it_updates(optimizer: str, dtype: torch.dtype) -> None:
    """A full fine-tune of 16-bit encoders: states at 16 bits, plus torch-optimi's Kahan buffer."""
    from simpletuner.memory.precision import optimizer_state_bytes
    from simpletuner.training.optimizers import build_optimizer

    config = load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", "unused",
                          "--data_backend_config", "unused.json", "--optimizer", optimizer], env={}, cwd=REPO)
    parameter = torch.nn.Parameter(torch.randn(1000, dtype=dtype))
    parameter.grad = torch.randn(1000, dtype=dtype)
    built = build_optimizer([parameter], config, 1e-4)
    built.step()
    state = [t for s in built.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim()]
    assert _bytes(state) == 1000 * optimizer_state_bytes(optimizer, parameter.element_size())


def test_a_run_training_its_text_encoders_is_estimated_higher_on_a_line_of_its_own(tiny_sdxl: Path) -> None:
    from simpletuner.memory.report import estimate_for_run, summary_lines
    from simpletuner.memory.text_encoders import estimate_trained_encoders

    family = get_family("sdxl", None)
    source = ModelSource(base=str(tiny_sdxl))
    plain = estimate_for_run(_config("sdxl", tiny_sdxl), family, source, (64, 64))
    config = _config("sdxl", tiny_sdxl, "--train_text_encoder")
    trained = estimate_for_run(config, family, source, (64, 64))
    encoders = estimate_trained_encoders(config, family, source, 1)
    assert trained.training["text encoders"] == encoders.total > 0
    assert trained.training_total == plain.training_total + encoders.total
    assert "text encoders" not in plain.training
    lines = summary_lines(trained, config)
    assert any(line.startswith("  text encoders (trained, on the device throughout): ") and "activations" in line
               for line in lines)


def test_encoders_without_their_files_here_are_said_to_be_left_out(tiny_sdxl: Path, tmp_path: Path) -> None:
    import shutil

    from simpletuner.memory.report import estimate_for_run, summary_lines

    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)
    shutil.rmtree(model / "tokenizer_2")
    config = _config("sdxl", model, "--train_text_encoder")
    estimate = estimate_for_run(config, get_family("sdxl", None), ModelSource(base=str(model)), (64, 64))
    assert estimate.text_encoders is None and "text encoders" not in estimate.training
    assert any("text encoders (trained): not estimated" in line for line in summary_lines(estimate, config))


def test_the_wizard_proposes_less_for_a_run_that_trains_its_text_encoders(tiny_sdxl: Path) -> None:
    from simpletuner.wizard.proposal import MARGIN, estimate_needed, propose

    answers = {"model_family": "sdxl", "pretrained_model_name_or_path": str(tiny_sdxl), "model_type": "lora",
               "lora_type": "standard", "lora_rank": 16}
    values = {"resolution": 1024, "train_batch_size": 1}
    plain = estimate_needed(answers, values, on_gpu=False)
    with_encoders = estimate_needed({**answers, "train_text_encoder": True}, values, on_gpu=False)
    assert with_encoders > plain
    memory = int((plain + with_encoders) / 2 / MARGIN)  # the plain run fits with the margin; with encoders not
    fits = propose(answers, memory, on_gpu=False)
    assert fits.values["resolution"] == 1024 and fits.values["gradient_checkpointing"] is False
    frugal = propose({**answers, "train_text_encoder": True}, memory, on_gpu=False)
    assert frugal.values["gradient_checkpointing"] is True  # the first saving that makes room
    assert frugal.needed <= MARGIN * memory


def test_the_dry_run_refuses_a_run_whose_trained_encoders_do_not_fit(tiny_sdxl: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from simpletuner.cli import train
    from simpletuner.memory.report import estimate_for_run, required_memory
    from simpletuner.tools.demo_data import make_demo_dataset
    from weightless import header_only_copy

    for name in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND", "TRAINING_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    model = header_only_copy(tiny_sdxl, tmp_path / "model")  # nothing can load: the dry run reads headers only
    make_demo_dataset(tmp_path / "data", count=4, sizes=((64, 64),))
    (tmp_path / "mdb.json").write_text(json.dumps([
        {"id": "pics", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"},
    ]))
    flags = ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model), "--data_backend_config",
             "mdb.json", "--output_dir", "out", "--mixed_precision", "no", "--max_train_steps", "2"]
    family, source = get_family("sdxl", None), ModelSource(base=str(model))
    needed = [required_memory(estimate_for_run(load_config(flags + extra, env={}, cwd=tmp_path), family, source,
                                               (64, 64)), torch.device("cpu"))
              for extra in ([], ["--train_text_encoder"])]
    assert needed[1] > needed[0]
    limit = f"{(needed[0] + needed[1]) / 2 / 2**30:.9f}"
    assert train.main([*flags, "--memory_limit_gb", limit, "--dry_run"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert train.main([*flags, "--memory_limit_gb", limit, "--train_text_encoder", "--dry_run"]) == 2
    out, err = capsys.readouterr()
    assert "  text encoders (trained, on the device throughout): " in out
    assert "exceeds --memory_limit_gb" in err


# ---------------------------------------------------------------- --fused_qkv_projections


def _profiled_step_peak(family, denoiser, latent_shape, dtype: torch.dtype) -> int:
    """The CPU allocator's peak during one forward + backward, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    noisy = torch.randn(2, *latent_shape, dtype=dtype)
    batch = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in family.example_text_batch(denoiser.config, 2).items()}
    inputs = family.model_inputs(batch, noisy, torch.full((2,), 500.0))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        family.prediction(denoiser(**inputs), noisy).float().pow(2).mean().backward()
    current = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family_name", ["sdxl", "flux"])
def test_fused_qkv_changes_what_the_estimate_says_by_what_a_real_step_shows(family_name: str, dtype: torch.dtype,
                                                                           request: pytest.FixtureRequest) -> None:
    """Fusing keeps the weights (the separate q/k/v are views of the fused weight), trains one
    lora_A per fused Linear instead of one per projection, and changes the activations either
    way: a saved chunk of the fused output holds all of it (Flux's q/k norms: more), one LoRA
    down-projection is saved instead of three (less), and on a bf16 base, where PEFT casts the
    input to the fp32 LoRA, one fp32 copy of the input instead of three (much less).  The
    trace sees all of it."""
    from simpletuner.attention import fused_qkv
    from simpletuner.memory.activations import trace_activations
    from simpletuner.memory.skeleton import build_skeleton
    from simpletuner.training.trainable import trainable_for

    model = request.getfixturevalue(f"tiny_{family_name}")
    family = get_family(family_name, None)
    source = ModelSource(base=str(model))
    channels = json.loads((model / "vae" / "config.json").read_text())["latent_channels"]
    shape = (channels, 32, 32)
    figures = {}
    for fused in (False, True):
        config = _config(family_name, model, *(["--fused_qkv_projections"] if fused else []))
        skeleton = build_skeleton(family, source, config, dtype)
        traced = trace_activations(family, skeleton.module, 2, shape, dtype).without_checkpointing
        real = family.load_denoiser(source).requires_grad_(False).to(dtype)
        frozen = _bytes(dict((p.untyped_storage().data_ptr(), p) for p in real.parameters()).values())
        if fused:
            fused_qkv.fuse(real)
        trainable = trainable_for(config, family)
        trainable.prepare(real)
        real.train()
        assert skeleton.trained_parameters == sum(p.numel() for p in trainable.parameters(real))
        assert skeleton.frozen_parameters * dtype.itemsize == frozen  # the fused weights add no memory
        figures[fused] = (skeleton.trained_parameters, traced, _profiled_step_peak(family, real, shape, dtype))
    (plain_trained, plain_traced, plain_peak), (fused_trained, fused_traced, fused_peak) = figures[False], figures[True]
    assert fused_trained < plain_trained
    # The step peaks as backward starts, all activations held: fusing moves it by what the trace says.
    measured, traced = fused_peak - plain_peak, fused_traced - plain_traced
    print(f"{family_name} {dtype}: fused - plain, measured {measured} bytes of {plain_peak}, traced {traced}")
    assert measured != 0 and abs(measured - traced) <= 0.05 * abs(measured)
