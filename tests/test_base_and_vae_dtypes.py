"""--base_model_default_dtype (the frozen base's storage dtype) and --vae_dtype (the VAE's while caching).

The frozen base is placed by the trainer's own ``_load_trainable_denoiser``
(cast, quantise, adapter), so its parameter dtypes are what a run trains on.
The VAE dtype is watched at the moment each batch is encoded, and its effect
on the latent cache is read from the cache report of real ``--cache_only`` runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from adapter_harness import train, trained_denoiser, write_project
from cache_helpers import log_text
from family_harness import train_in_process

BF16, FP32 = torch.bfloat16, torch.float32


def _config(root: Path, model: Path, *flags: str, family: str = "sdxl") -> Any:
    from simpletuner.config.loader import load_config

    return load_config(["--model_family", family, "--pretrained_model_name_or_path", str(model),
                        "--data_backend_config", str(root / "mdb.json"), "--output_dir", str(root / "out"),
                        "--seed", "0", *flags], env={}, cwd=root)


def _placed_denoiser(root: Path, model: Path, *flags: str) -> torch.nn.Module:
    """The denoiser exactly as the trainer prepares it for training (no data, no caches)."""
    from simpletuner.training.setup import training_dtype
    from simpletuner.training.trainer import Trainer

    trainer = Trainer(_config(root, model, *flags), show_progress=False)
    trainer.device, trainer.dtype = torch.device("cpu"), training_dtype(trainer.config)
    trainer.accelerator = SimpleNamespace(is_main_process=True, num_processes=1)  # what loading asks of it
    return trainer._load_trainable_denoiser(total_steps=1)


def _dtypes(denoiser: torch.nn.Module) -> tuple[set[torch.dtype], set[torch.dtype]]:
    """(dtypes of the frozen base's parameters, dtypes of the LoRA's)."""
    base = {p.dtype for name, p in denoiser.named_parameters() if "lora_" not in name}
    lora = {p.dtype for name, p in denoiser.named_parameters() if "lora_" in name}
    return base, lora


# ------------------------------------------------------ --base_model_default_dtype


def test_frozen_base_is_stored_in_the_chosen_dtype(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = write_project(tmp_path)
    # Default under bf16 mixed precision: the frozen base in bf16 (as before the option existed).
    assert _dtypes(_placed_denoiser(root, tiny_sdxl, "--mixed_precision", "bf16")) == ({BF16}, {FP32})
    # fp32: the whole frozen base at full precision; the adapter is fp32 either way.
    assert _dtypes(_placed_denoiser(root, tiny_sdxl, "--mixed_precision", "bf16",
                                    "--base_model_default_dtype", "fp32")) == ({FP32}, {FP32})
    # Without mixed precision nothing computes in bf16: the default leaves the base fp32.
    assert _dtypes(_placed_denoiser(root, tiny_sdxl, "--mixed_precision", "no")) == ({FP32}, {FP32})


def test_quantised_base_keeps_its_unquantised_layers_in_the_chosen_dtype(tmp_path: Path, tiny_sdxl: Path) -> None:
    from simpletuner.quantisation.apply import quantised_layer_names

    root = write_project(tmp_path)
    for choice, expected in (("bf16", BF16), ("fp32", FP32)):
        denoiser = _placed_denoiser(root, tiny_sdxl, "--mixed_precision", "bf16",
                                    "--base_model_precision", "int8-quanto", "--base_model_default_dtype", choice)
        assert quantised_layer_names(denoiser), "nothing was quantised"
        # The layers the family keeps unquantised (conv_in, conv_out, embedders) and the norms.
        kept = {name: p.dtype for name, p in denoiser.named_parameters()
                if name.startswith(("conv_in.", "conv_out.", "time_embedding.", "add_embedding.", "conv_norm_out."))}
        assert kept and set(kept.values()) == {expected}, (choice, kept)


def test_option_is_set_aside_without_bf16_compute(tmp_path: Path, tiny_sdxl: Path) -> None:
    root = write_project(tmp_path)
    config = _config(root, tiny_sdxl, "--mixed_precision", "no", "--base_model_default_dtype", "fp32")
    assert any("--base_model_default_dtype=fp32 has no effect" in m and "--mixed_precision no" in m
               for m in config.ignored), config.ignored
    full = _config(root, tiny_sdxl, "--model_type", "full", "--base_model_default_dtype", "fp32")
    assert any("--base_model_default_dtype=fp32 has no effect" in m for m in full.ignored), full.ignored


def test_bf16_run_trains_on_an_fp32_base(tmp_path: Path, tiny_sdxl: Path) -> None:
    """Autocast computes in bf16 over fp32 frozen weights; the adapter learns and the base stays fp32."""
    root = write_project(tmp_path)
    trainer, _ = train(root, tiny_sdxl, "sdxl", "--mixed_precision", "bf16", "--base_model_default_dtype", "fp32",
                       "--max_train_steps", "2", "--learning_rate", "1e-2", "--lora_rank", "4")
    denoiser = trained_denoiser(trainer)
    assert _dtypes(denoiser) == ({FP32}, {FP32})
    lora_b = [p for name, p in denoiser.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "the adapter did not train"


# ------------------------------------------------------------------- --vae_dtype


@pytest.fixture
def encoded(monkeypatch: Any) -> list[tuple[torch.dtype, torch.Tensor]]:
    """(VAE dtype, latents) of every batch SDXL encodes, as the VAE ran."""
    from simpletuner.families.sdxl import SDXLFamily

    batches: list[tuple[torch.dtype, torch.Tensor]] = []
    real_encode = SDXLFamily.encode_images

    def encode(self: Any, vae: Any, pixels: torch.Tensor, generators: list) -> torch.Tensor:
        latents = real_encode(self, vae, pixels, generators)
        batches.append((vae.dtype, latents.float()))
        return latents

    monkeypatch.setattr(SDXLFamily, "encode_images", encode)
    return batches


def _cache_run(root: Path, model: Path, caplog: Any, encoded: list, *flags: str) -> tuple[tuple[int, int], list]:
    """One --cache_only run: (latents reused, encoded) and the batches it encoded."""
    encoded.clear()
    caplog.clear()
    train_in_process(root, model, "sdxl", "--cache_only", *flags)
    found = re.findall(r"'classes' latent cache: (\d+) reused, (\d+) encoded", log_text(caplog))
    assert found, log_text(caplog)[-2000:]
    return (int(found[-1][0]), int(found[-1][1])), list(encoded)


def _stored_latents(root: Path) -> set[str]:
    return {path.name for path in (root / "cache" / "vae" / "latents").rglob("*.safetensors")}


def _unused_latents(root: Path, model: Path, *flags: str) -> set[str]:
    """The latent entries ``prune_cache`` would remove for a run with these options."""
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.tools.prune_cache import _orphans

    config = _config(root, model, "--mixed_precision", "no", *flags)
    family = get_family("sdxl", config)
    found = dict(_orphans(config, family, ModelSource.from_config(config, family)))
    return {Path(name).name for name in found["dataset 'classes' latents"].names}


def test_vae_dtype_encodes_in_that_dtype_and_keys_the_cache(tmp_path: Path, tiny_sdxl: Path, caplog,
                                                            encoded) -> None:
    caplog.set_level(logging.INFO)
    root = write_project(tmp_path)  # 4 images, every one in the same bucket
    counts, default_batches = _cache_run(root, tiny_sdxl, caplog, encoded)
    assert counts == (0, 4) and {dtype for dtype, _ in default_batches} == {FP32}
    default_entries = _stored_latents(root)
    assert len(default_entries) == 4

    # bf16: another key, so every latent is encoded again, by a bf16 VAE, into different latents.
    counts, bf16_batches = _cache_run(root, tiny_sdxl, caplog, encoded, "--vae_dtype", "bf16")
    assert counts == (0, 4) and {dtype for dtype, _ in bf16_batches} == {BF16}
    default_latents = torch.cat([latents for _, latents in default_batches])
    bf16_latents = torch.cat([latents for _, latents in bf16_batches])
    assert not torch.equal(default_latents, bf16_latents)
    assert torch.allclose(default_latents, bf16_latents, atol=0.1, rtol=0.1), "bf16 should be close, not unrelated"
    bf16_entries = _stored_latents(root) - default_entries
    assert len(bf16_entries) == 4, "the default-dtype entries must be kept beside the bf16 ones"

    # Unchanged: reused.  fp32 is what default means, so it reuses the default entries.
    assert _cache_run(root, tiny_sdxl, caplog, encoded, "--vae_dtype", "bf16") == ((4, 0), [])
    assert _cache_run(root, tiny_sdxl, caplog, encoded, "--vae_dtype", "fp32") == ((4, 0), [])
    assert _cache_run(root, tiny_sdxl, caplog, encoded) == ((4, 0), [])

    # The cache pruner keys entries the same way: each dtype's run uses only its own.
    assert _unused_latents(root, tiny_sdxl, "--vae_dtype", "bf16") == default_entries
    assert _unused_latents(root, tiny_sdxl) == bf16_entries


def test_fp16_warns_for_the_stock_sdxl_vae_only(tmp_path: Path, tiny_sdxl: Path, tiny_legacy: Path, caplog) -> None:
    from simpletuner.caching.vae_dtype import warn_if_vae_overflows
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family

    root = write_project(tmp_path)

    def warned(model: Path, family_name: str, *flags: str) -> bool:
        config = _config(root, model, *flags, family=family_name)
        family = get_family(family_name, config)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            warn_if_vae_overflows(family, ModelSource.from_config(config, family), config)
        return "overflows in fp16" in log_text(caplog)

    assert warned(tiny_sdxl, "sdxl", "--vae_dtype", "fp16")
    assert "sdxl-vae-fp16-fix" in log_text(caplog)
    assert not warned(tiny_sdxl, "sdxl", "--vae_dtype", "bf16")
    assert not warned(tiny_sdxl, "sdxl", "--vae_dtype", "fp16", "--pretrained_vae_model_name_or_path",
                      str(tiny_sdxl / "vae"))
    assert not warned(tiny_legacy, "legacy", "--vae_dtype", "fp16")
