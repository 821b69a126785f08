"""--attention_mechanism and --fused_qkv_projections: what validation refuses, in one line.

Hardware is passed in (as the quantisation matrix tests do), so CUDA cells
are asked about on this CPU machine.  The GPU-only backends that pass these
checks are run for real by ``benchmarks/attention_gpu.py`` on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simpletuner.attention.backends import MECHANISMS
from simpletuner.config.loader import load_config
from simpletuner.errors import USER_ERROR_EXIT_CODE, ConfigError
from simpletuner.quantisation.matrix import CPU, CUDA, MPS, Hardware

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LYCORIS = REPO / "config" / "lycoris_config.json.example"
CPU_ONLY, H100, A100, T4 = Hardware(CPU), Hardware(CUDA, (9, 0)), Hardware(CUDA, (8, 0)), Hardware(CUDA, (7, 5))


def _load(tmp_path: Path, family: str, *flags: str, hardware: Hardware = CPU_ONLY):
    argv = ["--model_family", family, "--pretrained_model_name_or_path", "some/model",
            "--data_backend_config", "mdb.json", "--output_dir", "out", *flags]
    return load_config(argv, env={}, cwd=tmp_path, hardware=hardware)


def _refusal(tmp_path: Path, family: str, *flags: str, hardware: Hardware = CPU_ONLY) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, family, *flags, hardware=hardware)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_the_default_and_cpu_capable_backends_validate(tmp_path: Path) -> None:
    assert _load(tmp_path, "sdxl").attention_mechanism == "diffusers"
    assert _load(tmp_path, "flux", "--attention_mechanism", "native_math").attention_mechanism == "native_math"
    assert _load(tmp_path, "flux", "--fused_qkv_projections").fused_qkv_projections is True
    assert _load(tmp_path, "sdxl", "--fuse_qkv_projections").fused_qkv_projections is True  # SimpleTuner's spelling


@pytest.mark.parametrize("name", [m.name for m in MECHANISMS if m.package])
def test_a_missing_package_is_named_with_what_to_install(tmp_path: Path, name: str) -> None:
    mechanism = next(m for m in MECHANISMS if m.name == name)
    if importlib.util.find_spec(mechanism.module) is not None:  # asked directly, not through the code under test
        pytest.skip(f"{mechanism.package} is installed here")
    message = _refusal(tmp_path, "flux", "--attention_mechanism", name, hardware=H100)
    assert message.startswith(f"--attention_mechanism={name}: needs the {mechanism.package} package")
    assert message.endswith("install it or use --attention_mechanism diffusers")


@pytest.mark.parametrize("name, hardware, needed", [
    ("native_cudnn", CPU_ONLY, "cannot run on a CPU without a GPU: PyTorch's cuDNN attention needs a CUDA GPU "
                               "of compute capability 8.0+"),
    ("native_cudnn", T4, "cannot run on a CUDA GPU of compute capability 7.5"),
    ("native_flash", T4, "needs an Ampere or newer CUDA GPU (compute capability 8.0+)"),
    ("native_efficient", Hardware(MPS), "cannot run on Apple MPS: PyTorch has no memory-efficient attention "
                                        "kernel for the CPU or MPS"),
])
def test_missing_hardware_is_named(tmp_path: Path, name: str, hardware: Hardware, needed: str) -> None:
    message = _refusal(tmp_path, "flux", "--attention_mechanism", name, hardware=hardware)
    assert message.startswith(f"--attention_mechanism={name}: ")
    assert needed in message


def test_a_gpu_backend_passes_on_its_gpu(tmp_path: Path) -> None:
    assert _load(tmp_path, "flux", "--attention_mechanism", "native_cudnn", hardware=A100).attention_mechanism \
        == "native_cudnn"


@pytest.mark.parametrize("family", ["sdxl", "legacy", "kolors", "pixart_sigma", "sd3"])
@pytest.mark.parametrize("name", ["native_math", "flash_3", "sageattention"])
def test_families_whose_attention_skips_the_dispatcher_are_refused_dispatcher_backends(
        tmp_path: Path, family: str, name: str) -> None:
    message = _refusal(tmp_path, family, "--attention_mechanism", name, hardware=H100)
    assert message.startswith(f"--attention_mechanism={name}: {family}'s attention processors in diffusers call "
                              "torch's scaled_dot_product_attention directly")
    assert message.endswith(f"on {family} use diffusers or xformers")


def test_half_precision_kernels_refuse_fp32(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "flux", "--attention_mechanism", "native_flash", "--mixed_precision", "no",
                       hardware=H100)
    assert message.endswith("native_flash's kernels take only bf16/fp16 inputs; train with --mixed_precision bf16")


def test_kernels_without_masks_refuse_masked_flux_training(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "flux", "--attention_mechanism", "native_flash",
                       "--flux_attention_masked_training", hardware=H100)
    assert "native_flash takes no attention mask, which --flux_attention_masked_training needs" in message
    _load(tmp_path, "flux", "--attention_mechanism", "native_cudnn", "--flux_attention_masked_training",
          hardware=H100)


def test_fused_projections_refuse_lycoris_and_quantised_bases(tmp_path: Path) -> None:
    lycoris = _refusal(tmp_path, "sdxl", "--fused_qkv_projections", "--lora_type", "lycoris",
                       "--lycoris_config", str(EXAMPLE_LYCORIS))
    assert lycoris.startswith("--fused_qkv_projections does not work with --lora_type lycoris: LyCORIS wraps")
    quantised = _refusal(tmp_path, "sdxl", "--fused_qkv_projections", "--base_model_precision", "int8-quanto")
    assert quantised.startswith("--fused_qkv_projections does not work with --base_model_precision int8-quanto")
    assert "quantised weight tensors" in quantised


def test_simpletuners_xformers_switch_asks_for_the_xformers_mechanism(tmp_path: Path) -> None:
    if importlib.util.find_spec("xformers") is not None:
        assert _load(tmp_path, "sdxl", "--enable_xformers_memory_efficient_attention",
                     hardware=H100).attention_mechanism == "xformers"
        return
    message = _refusal(tmp_path, "sdxl", "--enable_xformers_memory_efficient_attention", hardware=H100)
    assert message.startswith("--attention_mechanism=xformers: needs the xformers package")
    assert message.endswith("(--enable_xformers_memory_efficient_attention asks for it)")
    # An explicit mechanism wins over the old switch.
    assert _load(tmp_path, "flux", "--enable_xformers_memory_efficient_attention", "--attention_mechanism",
                 "native_math").attention_mechanism == "native_math"


def test_xformers_processors_would_undo_fusion_on_unet_families(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "sdxl", "--attention_mechanism", "xformers", "--fused_qkv_projections",
                       hardware=H100)
    assert "would undo --fused_qkv_projections" in message


def test_train_py_exits_2_with_one_line_for_a_backend_the_family_cannot_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         "some/model", "--data_backend_config", "mdb.json", "--output_dir", "out",
         "--attention_mechanism", "flash_3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    # Every problem one line (the missing mdb.json is another); ours among them.
    assert all(line.startswith("error: ") for line in lines), lines
    assert [line for line in lines if "attention" in line] == [
        line for line in lines if line.startswith("error: --attention_mechanism=flash_3: sdxl's attention")], lines
    assert any("attention" in line for line in lines), lines
    assert not (tmp_path / "out").exists()
