"""--fused_qkv_projections: diffusers' fused projections give the same model, and what is saved is unfused.

Forward passes of every family's tiny denoiser, fused and not, agree; a LoRA
trained on the fused projections is saved for the unfused base and loads
there in diffusers with the same outputs as the trained fused model; a full
fine-tune is saved as an ordinary model folder that diffusers loads without
a fused weight in it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapter_harness import output, train, write_project
from simpletuner.attention import fused_qkv
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family

FAMILIES = ["sdxl", "legacy", "kolors", "pixart_sigma", "sd3", "flux"]


def _inputs(family, denoiser, model: Path, seed: int = 0) -> dict:
    """Random inputs of the shapes a training batch has."""
    generator = torch.Generator().manual_seed(seed)
    channels = json.loads((model / "vae" / "config.json").read_text())["latent_channels"]
    batch = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in family.example_text_batch(denoiser.config, 2).items()}
    noisy = torch.randn(2, channels, 16, 16, generator=generator)
    return family.model_inputs(batch, noisy, torch.tensor([100.0, 700.0]))


def _output(family, denoiser, inputs: dict) -> torch.Tensor:
    return output(denoiser, inputs)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_fusing_keeps_the_forward_output(family_name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{family_name}")
    family = get_family(family_name)
    denoiser = family.load_denoiser(ModelSource(base=str(model))).eval()
    inputs = _inputs(family, denoiser, model)
    plain = _output(family, denoiser, inputs)
    count = fused_qkv.fuse(denoiser)
    # Really fused: diffusers made fused Linears, and its processors use them (the separate ones share their rows).
    assert count > 0 and fused_qkv.is_fused(denoiser)
    for _, block, fused in fused_qkv.fused_modules(denoiser):
        first = getattr(block, fused_qkv.FUSED_PARTS[fused][0])
        assert first.weight.data_ptr() == getattr(block, fused).weight.data_ptr()
    fused = _output(family, denoiser, inputs)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    # And the fused Linears are what runs now: changing one changes the output.
    _, block, name = next(fused_qkv.fused_modules(denoiser))
    with torch.no_grad():
        getattr(block, name).weight.mul_(1.5)
    assert not torch.allclose(_output(family, denoiser, inputs), plain, rtol=1e-4, atol=1e-5)


def test_a_partial_qkv_target_is_refused(tiny_sdxl: Path) -> None:
    from simpletuner.errors import ConfigError

    family = get_family("sdxl")
    denoiser = family.load_denoiser(ModelSource(base=str(tiny_sdxl)))
    fused_qkv.fuse(denoiser)
    with pytest.raises(ConfigError, match=r"targets to_q but not all of to_q, to_k, to_v in .*attn1"):
        fused_qkv.lora_targets(denoiser, ("attn1.to_q",))
    targets = fused_qkv.lora_targets(denoiser, ("to_q", "to_k", "to_v", "to_out.0"))
    assert any(t.endswith("attn1.to_qkv") for t in targets) and any(t.endswith("attn2.to_kv") for t in targets)
    # Cross-attention keeps its own query projection; self-attention's is inside to_qkv.
    assert any(t.endswith("attn2.to_q") for t in targets) and not any(t.endswith("attn1.to_q") for t in targets)


def _lora_modules(denoiser: torch.nn.Module) -> set[str]:
    return {name.split(".lora_A.")[0] for name, _ in denoiser.named_parameters() if ".lora_A." in name}


@pytest.mark.parametrize("family_name, flags", [("sdxl", ()), ("flux", ()), ("sdxl", ("--use_dora",))],
                         ids=["sdxl", "flux", "sdxl-dora"])
def test_a_lora_trained_fused_loads_on_the_unfused_base(tmp_path: Path, family_name: str, flags: tuple,
                                                        request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{family_name}")
    write_project(tmp_path)
    trainer, _ = train(tmp_path, model, family_name, "--fused_qkv_projections", "--max_train_steps", "2",
                       "--learning_rate", "1e-2", "--validation_steps", "100000", *flags)
    trained = trainer.accelerator.unwrap_model(trainer.denoiser).eval()
    # The adapter sits on the fused Linears (the separate q/k/v never run).
    lora_on = _lora_modules(trained)
    assert any(name.endswith(".to_qkv") for name in lora_on), sorted(lora_on)[:5]
    assert not any(name.endswith((".attn1.to_q", ".attn.to_q")) for name in lora_on)
    # Saved for the unfused base: no fused names in the file.
    with safe_open(str(tmp_path / "output" / "pytorch_lora_weights.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert keys and not any("to_qkv" in k or "to_kv" in k or "to_added_qkv" in k for k in keys)
    # ... but the self-attention q/k/v of the unfused layout (only the fused Linear was trained).
    self_attention = ".attn1." if family_name == "sdxl" else "single_transformer_blocks.0.attn."
    assert all(any(self_attention + part + "." in k for k in keys) for part in ("to_q", "to_k", "to_v")), keys[:6]
    # diffusers loads it on the ordinary base, and that model computes what the trained one does.
    family = get_family(family_name)
    pipeline = family.pipeline_class().from_pretrained(str(model))
    pipeline.load_lora_weights(str(tmp_path / "output"))
    loaded = getattr(pipeline, family.denoiser_component).eval()
    assert not fused_qkv.is_fused(loaded)
    inputs = _inputs(family, loaded, model, seed=1)
    base = family.load_denoiser(ModelSource(base=str(model))).eval()
    expected = _output(family, trained, inputs)
    torch.testing.assert_close(_output(family, loaded, inputs), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_output(family, base, inputs), expected, rtol=1e-4, atol=1e-5)  # it did learn


def test_a_full_fine_tune_trained_fused_saves_an_ordinary_model(tmp_path: Path, tiny_sdxl: Path) -> None:
    write_project(tmp_path)
    trainer, _ = train(tmp_path, tiny_sdxl, "sdxl", "--fused_qkv_projections", "--model_type", "full",
                       "--max_train_steps", "2", "--learning_rate", "1e-3",
                       "--validation_steps", "100000")
    trained = trainer.accelerator.unwrap_model(trainer.denoiser).eval()
    assert fused_qkv.is_fused(trained)
    # Only the fused Linears trained; the separate ones are frozen views of their rows.
    trained_names = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert any(n.endswith("attn1.to_qkv.weight") for n in trained_names)
    assert not any(n.endswith("attn1.to_q.weight") for n in trained_names)
    unet = tmp_path / "output" / "unet"
    with safe_open(str(next(unet.glob("*.safetensors"))), "pt") as saved:
        keys = list(saved.keys())
    assert not any("to_qkv" in k or "to_kv" in k for k in keys)
    from diffusers import UNet2DConditionModel

    loaded, info = UNet2DConditionModel.from_pretrained(str(unet), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    family = get_family("sdxl")
    inputs = _inputs(family, loaded, tiny_sdxl, seed=2)
    expected = _output(family, trained, inputs)
    torch.testing.assert_close(_output(family, loaded.eval(), inputs), expected, rtol=1e-4, atol=1e-5)
    base = family.load_denoiser(ModelSource(base=str(tiny_sdxl))).eval()
    assert not torch.allclose(_output(family, base, inputs), expected, rtol=1e-4, atol=1e-5)
    # A checkpoint holds the ordinary layout too, and resuming fills the fused Linears from it.
    folder = tmp_path / "state"
    folder.mkdir()
    trainer.trainable.save_state(trained, folder)
    from safetensors.torch import load_file

    assert not any("to_qkv" in k or "to_kv" in k for k in load_file(str(folder / "trainable.safetensors")))
    fused_qkv.fuse(base)
    trainer.trainable.load_state(base, folder)
    torch.testing.assert_close(_output(family, base, inputs), expected, rtol=1e-5, atol=1e-6)



def test_a_lora_checkpoint_resumes_only_with_the_fusing_it_was_saved_with(tmp_path: Path, tiny_sdxl: Path) -> None:
    from simpletuner.config.loader import load_config
    from simpletuner.errors import ConfigError
    from simpletuner.training.trainable import LoraTraining

    config = load_config(["--model_family", "sdxl", "--print_config"], env={}, cwd=tmp_path)
    family = get_family("sdxl", config)
    trainable = LoraTraining(config, family)

    def lora_b(denoiser: torch.nn.Module) -> list[torch.Tensor]:
        return [p for n, p in denoiser.named_parameters() if "lora_B" in n]

    models, folders = {}, {}
    for fused, value in ((True, 0.5), (False, 0.25)):
        denoiser = family.load_denoiser(ModelSource(base=str(tiny_sdxl)))
        if fused:
            fused_qkv.fuse(denoiser)
        trainable.prepare(denoiser)
        with torch.no_grad():  # trained-looking weights, so a load that happened would show
            for parameter in lora_b(denoiser):
                parameter.fill_(value)
        folders[fused] = tmp_path / f"checkpoint-{int(fused)}"
        folders[fused].mkdir()
        trainable.save_state(denoiser, folders[fused])
        models[fused] = denoiser
    for fused, value in ((True, 0.5), (False, 0.25)):
        # The other fusing is refused with one line naming the checkpoint and the flag, changing nothing.
        with pytest.raises(ConfigError) as raised:
            trainable.load_state(models[not fused], folders[fused])
        how = "with" if fused else "without"
        assert str(raised.value) == (f"{folders[fused]} was saved {how} --fused_qkv_projections; "
                                     f"resume it {how} --fused_qkv_projections")
        assert all(p.ne(value).all() for p in lora_b(models[not fused]))
    # The same fusing resumes.
    for fused, value in ((True, 0.5), (False, 0.25)):
        with torch.no_grad():
            for parameter in lora_b(models[fused]):
                parameter.zero_()
        trainable.load_state(models[fused], folders[fused])
        assert all(p.eq(value).all() for p in lora_b(models[fused]))
