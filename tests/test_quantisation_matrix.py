"""The support matrix: what validation refuses, in one line, before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.quantisation.matrix import CPU, CUDA, MPS, ROWS, Combination, Hardware, check, runs_on
from simpletuner.quantisation.precisions import PRECISION_NAMES

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LYCORIS = REPO / "config" / "lycoris_config.json.example"  # algo lokr
CPU_ONLY, H100, A100, RTX3090 = Hardware(CPU), Hardware(CUDA, (9, 0)), Hardware(CUDA, (8, 0)), Hardware(CUDA, (8, 6))


def _load(tmp_path: Path, *flags: str, hardware: Hardware = CPU_ONLY, env: dict | None = None):
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "some/model",
            "--data_backend_config", "mdb.json", "--output_dir", "out", *flags]
    return load_config(argv, env=env or {}, cwd=tmp_path, hardware=hardware)


def _refusal(tmp_path: Path, *flags: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, *flags, **kwargs)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_nf4_on_a_cpu_names_the_gpu_need_and_what_works_here(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "--base_model_precision", "nf4-bnb")
    assert message.startswith("--base_model_precision=nf4-bnb: cannot run on a CPU without a GPU")
    assert "runs only on a CUDA GPU" in message
    assert message.endswith("; on a CPU without a GPU use int8-quanto or int4-quanto")


def test_gpu_cells_pass_on_the_gpu_they_need(tmp_path: Path) -> None:
    assert _load(tmp_path, "--base_model_precision", "nf4-bnb", hardware=H100).base_model_precision == "nf4-bnb"
    _load(tmp_path, "--base_model_precision", "fp8-torchao", hardware=H100)
    _load(tmp_path, "--base_model_precision", "fp8-quanto", hardware=A100)
    message = _refusal(tmp_path, "--base_model_precision", "fp8-torchao", hardware=RTX3090)
    assert "compute capability 8.6" in message and "needs compute capability 8.9+" in message
    assert message.endswith("use int8-quanto or int4-quanto")  # what this card can do instead
    assert "no float8" in _refusal(tmp_path, "--base_model_precision", "fp8-quanto", hardware=Hardware(MPS))


@pytest.mark.parametrize("precision", [n for n in PRECISION_NAMES if n != "no_change"])
def test_no_quantised_full_fine_tune(tmp_path: Path, precision: str) -> None:
    hardware = CPU_ONLY if precision != "nf4-bnb" else H100
    message = _refusal(tmp_path, "--base_model_precision", precision, "--model_type", "full", hardware=hardware)
    assert f"--base_model_precision={precision} with --model_type full" in message
    assert message.endswith("use --model_type lora or --base_model_precision no_change")
    _load(tmp_path, "--model_type", "full", hardware=hardware)  # unquantised full is fine


def test_lycoris_on_torchao_is_refused_and_on_quanto_allowed(tmp_path: Path) -> None:
    lycoris = ("--lora_type", "lycoris", "--lycoris_config", str(EXAMPLE_LYCORIS))
    message = _refusal(tmp_path, "--base_model_precision", "int8-torchao", *lycoris)
    assert "with LyCORIS lokr" in message and "NotImplementedError" in message and "int8-quanto" in message
    _load(tmp_path, "--base_model_precision", "int8-quanto", *lycoris)


def test_environment_cells(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "--base_model_precision", "int8-torchao", env={"TRAINING_NUM_PROCESSES": "2"})
    assert "2 processes" in message and "int8-quanto" in message
    _refusal(tmp_path, "--base_model_precision", "int8-torchao", env={"WORLD_SIZE": "4"})
    _load(tmp_path, "--base_model_precision", "int8-quanto", env={"WORLD_SIZE": "2"})
    message = _refusal(tmp_path, "--base_model_precision", "fp8-quanto", env={"TRAINING_DYNAMO_BACKEND": "inductor"})
    assert "TRAINING_DYNAMO_BACKEND=inductor" in message
    _load(tmp_path, "--base_model_precision", "fp8-quanto", env={"TRAINING_DYNAMO_BACKEND": "no"})
    _load(tmp_path, "--base_model_precision", "int8-quanto", env={"TRAINING_DYNAMO_BACKEND": "inductor"})


def test_other_refusals(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "--base_model_precision", "int8-quanto", "--lora_init_type", "pissa")
    assert "rewrites the base weights" in message and "--lora_init_type default" in message
    assert "remove --quantize_activations" in _refusal(tmp_path, "--base_model_precision", "int8-quanto",
                                                        "--quantize_activations")
    assert "needs a quantised" in _refusal(tmp_path, "--quantize_activations")
    assert "fourth text encoder" in _refusal(tmp_path, "--text_encoder_4_precision", "int8-quanto")
    message = _refusal(tmp_path, "--text_encoder_2_precision", "nf4-bnb")
    assert message.startswith("--text_encoder_2_precision=nf4-bnb: cannot run on a CPU")
    _load(tmp_path, "--text_encoder_2_precision", "int8-quanto")
    # A text encoder the family does not have: the option table's own rule names it
    # as having no effect (a start-up warning) and leaves it at its default.
    config = _load(tmp_path, "--text_encoder_3_precision", "int8-quanto")
    assert config.text_encoder_3_precision == "no_change"
    assert [line for line in config.ignored if "--text_encoder_3_precision" in line and "sd3" in line], config.ignored


def test_an_unknown_precision_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int3-quanto.*no_change, int8-quanto"):
        _load(tmp_path, "--base_model_precision", "int3-quanto")


def test_every_precision_is_implemented_or_refused_with_a_reason(tmp_path: Path) -> None:
    """No choice answers "not implemented yet": each runs somewhere, and each refusal says why."""
    machines = (CPU_ONLY, Hardware(MPS), RTX3090, H100)
    for precision in PRECISION_NAMES:
        outcomes = []
        for hardware in machines:
            try:
                _load(tmp_path, "--base_model_precision", precision, hardware=hardware)
                outcomes.append(None)
            except ConfigError as error:
                assert "not implemented" not in str(error)
                assert ": cannot run on" in str(error) and str(error).split(": ")[2].strip(), str(error)
                outcomes.append(str(error))
        assert None in outcomes, f"{precision} runs nowhere"
    for row in ROWS:
        for kind in (CPU, MPS, CUDA):
            if not runs_on(row, Hardware(kind, (7, 0))):
                assert row.hardware_why, row.precision


def test_check_is_silent_for_working_cells() -> None:
    assert check(Combination("int8-quanto"), CPU_ONLY) is None
    assert check(Combination("no_change", model_type="full"), CPU_ONLY) is None


def test_the_cli_stops_with_exit_2_before_loading(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env["PYTHONPATH"] = str(REPO)
    env["CUDA_VISIBLE_DEVICES"] = ""  # whatever this machine has, ask as a CPU-only one
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(tmp_path / "no-model-here"), "--data_backend_config", "mdb.json", "--output_dir", "out",
         "--base_model_precision", "nf4-bnb"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # Every mistake is listed in one run (here the missing mdb.json too); the precision once.
    precision_errors = [line for line in errors if "base_model_precision" in line]
    assert len(precision_errors) == 1 and "--base_model_precision=nf4-bnb: cannot run on" in precision_errors[0], \
        result.stderr
    assert not (tmp_path / "out").exists()
