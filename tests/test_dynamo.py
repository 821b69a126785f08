"""TRAINING_DYNAMO_BACKEND: the trained denoiser is compiled with torch.compile.

Compiling the tiny UNet with inductor on a CPU takes minutes, so the training
run uses aot_eager (the same graph capture, forward and backward, without
code generation); that inductor is what the variable configures is checked on
the accelerator it builds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from family_harness import write_two_class_project
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.training.setup import build_accelerator, dynamo_backend


@pytest.fixture(autouse=True)
def fresh_accelerator_state(monkeypatch: pytest.MonkeyPatch):
    """accelerate keeps one process-wide state: a compile setting must not leak into other tests."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    monkeypatch.delenv("TRAINING_DYNAMO_BACKEND", raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _config(tmp_path: Path, *flags: str):
    return load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config",
                        "d.json", "--output_dir", str(tmp_path / "out"), *flags], env={}, cwd=tmp_path)


def test_the_backend_comes_from_the_environment() -> None:
    assert dynamo_backend({}) is None
    assert dynamo_backend({"TRAINING_DYNAMO_BACKEND": " "}) is None
    assert dynamo_backend({"TRAINING_DYNAMO_BACKEND": "no"}) == "no"
    assert dynamo_backend({"TRAINING_DYNAMO_BACKEND": "Inductor"}) == "inductor"


def test_an_unknown_backend_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRAINING_DYNAMO_BACKEND=inductr: not a torch.compile backend.*inductor"):
        build_accelerator(_config(tmp_path), tmp_path / "out", env={"TRAINING_DYNAMO_BACKEND": "inductr"})
    assert not (tmp_path / "out").exists()


def test_inductor_without_a_compiler_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ or clang++ here
    with pytest.raises(ConfigError, match="inductor needs a C\\+\\+ compiler"):
        dynamo_backend({"TRAINING_DYNAMO_BACKEND": "inductor"})


def test_inductor_compiles_the_prepared_model(tmp_path: Path) -> None:
    from accelerate.utils import DynamoBackend

    accelerator = build_accelerator(_config(tmp_path), tmp_path / "out", env={"TRAINING_DYNAMO_BACKEND": "inductor"})
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    model = torch.nn.Linear(4, 4)
    prepared = accelerator.prepare(model)
    assert isinstance(prepared, torch._dynamo.eval_frame.OptimizedModule)
    assert accelerator.unwrap_model(prepared, keep_torch_compile=False) is model


def test_without_the_variable_nothing_is_compiled(tmp_path: Path) -> None:
    accelerator = build_accelerator(_config(tmp_path), tmp_path / "out", env={})
    assert not isinstance(accelerator.prepare(torch.nn.Linear(4, 4)), torch._dynamo.eval_frame.OptimizedModule)


def _train(root: Path, model: Path, output_name: str):
    from accelerate.state import AcceleratorState

    from simpletuner.training.trainer import Trainer

    config = load_config(
        ["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model), "--data_backend_config",
         str(root / "mdb.json"), "--output_dir", str(root / output_name), "--mixed_precision", "no", "--seed", "0",
         "--max_train_steps", "2", "--checkpointing_steps", "2", "--learning_rate", "1e-2"],
        env={}, cwd=root,
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(config, show_progress=False)
    trainer.run()
    return trainer


def test_a_compiled_run_trains_and_saves_what_an_eager_run_does(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_two_class_project(tmp_path, per_class=1)
    eager = _train(root, tiny_sdxl, "eager")
    assert not isinstance(eager.denoiser, torch._dynamo.eval_frame.OptimizedModule)

    monkeypatch.setenv("TRAINING_DYNAMO_BACKEND", "aot_eager")
    compiled = _train(root, tiny_sdxl, "compiled")
    assert isinstance(compiled.denoiser, torch._dynamo.eval_frame.OptimizedModule)

    # Same weights, saved under the model's own names (not the compiled wrapper's _orig_mod.).
    for name in ("pytorch_lora_weights.safetensors", "checkpoint-2/trainable.safetensors"):
        expected, saved = load_file(root / "eager" / name), load_file(root / "compiled" / name)
        assert saved.keys() == expected.keys(), name
        for key, value in expected.items():
            assert torch.allclose(saved[key], value, atol=1e-5, rtol=1e-4), key
    initial_b = [v for k, v in saved.items() if "lora_B" in k or "lora.up" in k]
    assert any(v.abs().max() > 0 for v in initial_b), "the compiled run did not train"
