"""Every CPU cell of the quantisation matrix trains a tiny model and round-trips its adapter.

Each run quantises the family's denoiser as --base_model_precision says,
trains a PEFT LoRA a few steps, and then:
- the loss on the batches it saw is lower with the adapter than without it;
- the layers the family keeps unquantised are plain, the others quantised;
- the saved file holds only the adapter's float weights (no quantised
  tensors or scales), and diffusers loads it onto the *unquantised* base
  model with exactly the trained values.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapter_harness import fresh_denoiser, train, trained_denoiser, write_lycoris_config, write_project
from simpletuner.quantisation.apply import excluded, quantised_layer_names

LORA_FILE = "pytorch_lora_weights.safetensors"
FAMILIES = ("sdxl", "legacy", "kolors", "sd3", "flux", "pixart_sigma")
QUICK = [("int8-quanto", family) for family in FAMILIES]
# The other CPU precisions, on a UNet and on a transformer family.
SLOW = [(precision, family) for precision in ("int4-quanto", "int2-quanto", "int8-torchao") for family in ("sdxl", "flux")]
SLOW += [(precision, "sdxl") for precision in ("fp8-quanto", "fp8uz-quanto", "fp8-torchao")]


def _mean_loss(trainer, recorded, denoiser: torch.nn.Module) -> float:
    losses = []
    with torch.no_grad():
        for inputs, noisy, target in zip(recorded.inputs, recorded.noisy, recorded.targets):
            prediction = trainer.family.prediction(denoiser(**inputs), noisy)
            losses.append(torch.nn.functional.mse_loss(prediction.float(), target.float()).item())
    return sum(losses) / len(losses)


def _peft_state(denoiser: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float() for k, v in get_peft_model_state_dict(denoiser, adapter_name=adapter).items()}


def _train_and_check(tmp_path: Path, model: Path, family: str, precision: str) -> None:
    project = write_project(tmp_path)
    trainer, recorded = train(project, model, family, "--base_model_precision", precision, "--max_train_steps", "4",
                              "--learning_rate", "3e-3", "--lora_rank", "4", record=True)
    denoiser = trained_denoiser(trainer)

    quantised = quantised_layer_names(denoiser)
    assert quantised, "nothing was quantised"
    exclude = trainer.family.quantisation_exclude
    assert not [name for name in quantised if excluded(name, exclude)], "a layer the family keeps was quantised"
    kept = [name for name, _ in denoiser.named_modules() if excluded(name, exclude)]
    assert kept, f"the family's keep-unquantised patterns {exclude} match no module"

    with trainer.trainable.base_model(denoiser):
        before = _mean_loss(trainer, recorded, denoiser)
    after = _mean_loss(trainer, recorded, denoiser)
    assert after < before, f"the adapter did not lower the loss: {before} -> {after}"

    saved = load_file(project / "output" / LORA_FILE)
    assert saved and all(v.dtype.is_floating_point and type(v) is torch.Tensor for v in saved.values())
    # Only LoRA matrices (diffusers names them lora_A/B or lora.down/up): no scales, no packed weights.
    assert all(re.search(r"\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$", k) for k in saved), sorted(saved)[:5]

    pipeline = trainer.family.pipeline_class().from_pretrained(str(model))
    trainer.family.load_lora(pipeline, project / "output")
    base = getattr(pipeline, trainer.family.denoiser_component)
    assert not quantised_layer_names(base), "the pipeline's base model should be the unquantised one"
    loaded = _peft_state(base, adapter=base.peft_config and next(iter(base.peft_config)))
    trained = _peft_state(denoiser)
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("precision, family", QUICK)
def test_int8_quanto_trains_every_family_and_round_trips(tmp_path: Path, request, precision: str, family: str) -> None:
    _train_and_check(tmp_path, request.getfixturevalue(f"tiny_{family}"), family, precision)


@pytest.mark.slow
@pytest.mark.parametrize("precision, family", SLOW)
def test_other_cpu_precisions_train_and_round_trip(tmp_path: Path, request, precision: str, family: str) -> None:
    _train_and_check(tmp_path, request.getfixturevalue(f"tiny_{family}"), family, precision)


@pytest.mark.slow
def test_resume_on_a_quantised_base_is_bitwise_and_ema_works(tmp_path: Path, tiny_sdxl: Path) -> None:
    project = write_project(tmp_path)
    flags = ("--base_model_precision", "int4-quanto", "--max_train_steps", "4", "--checkpointing_steps", "2",
             "--learning_rate", "1e-3", "--use_ema", "--ema_decay", "0.9")
    train(project, tiny_sdxl, "sdxl", *flags)
    live = load_file(project / "output" / LORA_FILE)
    averaged = load_file(project / "output" / "ema" / LORA_FILE)
    assert any(not torch.equal(live[k], averaged[k]) for k in live), "EMA weights equal the live ones"

    shutil.copytree(project / "output" / "checkpoint-2", project / "resumed" / "checkpoint-2")
    train(project, tiny_sdxl, "sdxl", *flags, "--resume_from_checkpoint", "latest", output_name="resumed")
    resumed = load_file(project / "resumed" / LORA_FILE)
    resumed_average = load_file(project / "resumed" / "ema" / LORA_FILE)
    assert live.keys() == resumed.keys()
    for key in live:
        assert torch.equal(live[key], resumed[key]), key
        assert torch.equal(averaged[key], resumed_average[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lycoris_trains_on_a_quanto_base_and_loads_on_the_plain_one(tmp_path: Path, tiny_sdxl: Path, algo: str) -> None:
    from lycoris import create_lycoris_from_weights

    project = write_project(tmp_path)
    config = write_lycoris_config(tmp_path, {"algo": algo, "linear_dim": 4, "linear_alpha": 1,
                                             "apply_preset": {"target_module": ["Attention"]}})
    trainer, _ = train(project, tiny_sdxl, "sdxl", "--base_model_precision", "int8-quanto", "--lora_type", "lycoris",
                       "--lycoris_config", str(config), "--max_train_steps", "3", "--learning_rate", "3e-3")
    assert quantised_layer_names(trained_denoiser(trainer))
    saved = load_file(project / "output" / LORA_FILE)
    assert all(type(v) is torch.Tensor and v.dtype.is_floating_point for v in saved.values())
    trained = {k: v.detach().cpu() for k, v in trainer.trainable.network.state_dict().items()}
    changed = [k for k in saved if k in trained and not torch.equal(saved[k], torch.zeros_like(saved[k]))]
    assert changed, "nothing was trained"
    network, _ = create_lycoris_from_weights(1.0, str(project / "output" / LORA_FILE), fresh_denoiser(trainer))
    assert len(network.loras) == len(trainer.trainable.network.loras)
    for key, value in network.state_dict().items():
        if key in trained:
            assert torch.equal(value.cpu().to(trained[key].dtype), trained[key]), key


@pytest.mark.slow
def test_a_compiled_run_trains_on_a_quantised_base(tmp_path: Path, tiny_sdxl: Path, monkeypatch) -> None:
    # aot_eager: the graph capture of TRAINING_DYNAMO_BACKEND without inductor's
    # code generation, which takes minutes on a CPU (see test_dynamo.py).
    from accelerate.state import AcceleratorState

    project = write_project(tmp_path)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    monkeypatch.setenv("TRAINING_DYNAMO_BACKEND", "aot_eager")
    try:
        trainer, _ = train(project, tiny_sdxl, "sdxl", "--base_model_precision", "int8-quanto",
                           "--max_train_steps", "2", "--learning_rate", "1e-2")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert hasattr(trainer.denoiser, "_orig_mod"), "the denoiser was not compiled"
    assert quantised_layer_names(trained_denoiser(trainer))
    saved = load_file(project / "output" / LORA_FILE)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora.up" in k or "lora_B" in k), "nothing trained"


@pytest.mark.slow
def test_two_processes_train_on_a_quanto_base(tmp_path: Path, tiny_sdxl: Path) -> None:
    from simpletuner.tools.demo_data import make_demo_dataset
    from train_sh import run_train_sh, write_json

    make_demo_dataset(tmp_path / "data", count=4)
    write_json(tmp_path / "config" / "multidatabackend.json", [
        {"id": "shapes", "type": "local", "instance_data_dir": "data", "cache_dir_vae": "cache/vae",
         "caption_strategy": "textfile", "resolution": 64, "resolution_type": "pixel_area",
         "crop": True, "crop_style": "center", "crop_aspect": "square"},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ])
    write_json(tmp_path / "config" / "config.json", {
        "--model_family": "sdxl", "--pretrained_model_name_or_path": str(tiny_sdxl),
        "--data_backend_config": "config/multidatabackend.json", "--output_dir": "output",
        "--lora_rank": 4, "--learning_rate": 1e-2, "--max_train_steps": 2, "--seed": 3, "--mixed_precision": "no",
        "--report_to": "none", "--base_model_precision": "int8-quanto",
    })
    (tmp_path / "config" / "config.env").write_text("TRAINING_NUM_PROCESSES=2\n", encoding="utf-8")
    result = run_train_sh(tmp_path)
    assert "x 2 process(es)" in result.stderr, result.stderr[-3000:]
    assert "quantised" in result.stderr and "to int8-quanto" in result.stderr
    saved = load_file(tmp_path / "output" / LORA_FILE)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora.up" in k or "lora_B" in k), "nothing trained"
