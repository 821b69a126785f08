"""Each validation option changes what a validation draws or writes.

The runner (simpletuner/validation/runner.py) is driven directly around a tiny
SDXL with a LoRA (or a LyCORIS network), a real Accelerator and a real
text-embed store, so each option costs one or two 32 px, one-step images
instead of a training run.  Prompt selection is checked as plain functions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from simpletuner.caching.keys import text_key
from simpletuner.caching.store import TensorStore
from simpletuner.config.model import make_config
from simpletuner.config.options import OPTIONS
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.validation.library import BUILTIN_PROMPTS
from simpletuner.validation.prompts import UNCONDITIONAL, all_prompts
from simpletuner.validation.runner import Validation

pytestmark = pytest.mark.slow  # some forty tiny pipeline calls
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red square", "blurry, cropped, ugly", "ugly", ""]
IDENTITY = "test-encoders"


def config_with(**changes):
    values = {o.name: o.default for o in OPTIONS}
    values.update(model_family="sdxl", validation_prompt="a red square", validation_resolution="32",
                  validation_num_inference_steps=1, validation_disable_unconditional=True, validation_seed=1,
                  validation_guidance=5.0, validation_steps=2)
    values.update(changes)
    return make_config(values, set(), None)


@pytest.fixture(scope="module")
def parts(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory):
    """What a trainer holds at a validation step, for a tiny SDXL: encoders already gone."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    family = get_family("sdxl", config_with())
    source = ModelSource(base=str(tiny_sdxl))
    store = TensorStore(tmp_path_factory.mktemp("text"))
    for prompt, tensors in zip(PROMPTS, family.encode_text(family.load_text_encoders(source), PROMPTS)):
        store.save(text_key(prompt, IDENTITY), tensors)
    AcceleratorState._reset_state(reset_partial_state=True)
    return SimpleNamespace(family=family, source=source, accelerator=Accelerator(cpu=True),
                           lookup=SimpleNamespace(text_stores={"pics": store}, text_identity=IDENTITY))


def trainer_for(parts, config, step: int = 4, ema: bool = False):
    """A trainer's validation-time state around a fresh tiny UNet whose adapter is not zero."""
    from simpletuner.training.ema import build_ema
    from simpletuner.training.trainable import trainable_for

    trainable = trainable_for(config, parts.family)
    denoiser = parts.family.load_denoiser(parts.source)
    torch.manual_seed(0)  # the adapter's initialisation draws from it
    trainable.prepare(denoiser)
    parameters = trainable.parameters(denoiser)
    with torch.no_grad():
        for parameter in parameters:  # as if trained: the adapter changes the output
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)) * 0.2)
    return SimpleNamespace(
        accelerator=parts.accelerator, denoiser=denoiser, optimizer=torch.optim.SGD(parameters, lr=0.1),
        trained_parameters=parameters, trainable=trainable, lookup=parts.lookup, device=torch.device("cpu"),
        dtype=torch.float32, state=SimpleNamespace(global_step=step, seed=0),
        ema=build_ema(parameters, config, torch.device("cpu")) if ema else None,
    )


def validation_and_trainer(parts, config, step: int = 4, ema: bool = False):
    # The family reads its options from the run's config, as the trainer builds it.
    family = get_family("sdxl", config)
    validation = Validation(config, family, parts.source, Path(config.output_dir))
    validation.prompts_to_cache(SimpleNamespace(samples={"pics": []}), seed=0)
    return validation, trainer_for(parts, config, step, ema)


def validate(parts, tmp_path: Path, step: int = 4, ema: bool = False, at_start=False,
             **changes) -> list[dict]:
    """The manifest entries of one validation (with each image's pixels under "pixels")."""
    config = config_with(output_dir=str(tmp_path), **changes)
    validation, trainer = validation_and_trainer(parts, config, step, ema)
    if at_start:
        validation.at_start(trainer)
    else:
        validation.after_step(trainer)
    folder = tmp_path / "validation_images" / f"step_{step:06d}"
    if not folder.is_dir():
        return []
    entries = json.loads((folder / "manifest.json").read_text())["images"]
    for entry in entries:
        entry["pixels"] = np.asarray(Image.open(folder / entry["file"]))
    return entries


def pixels(parts, tmp_path: Path, name: str, **changes) -> np.ndarray:
    (entry,) = validate(parts, tmp_path / name, **changes)
    return entry["pixels"]


# --------------------------------------------------------------- images


@pytest.mark.parametrize("option, first, second", [
    ("validation_negative_prompt", "blurry, cropped, ugly", "ugly"),
    ("validation_guidance", 5.0, 1.0),
    ("validation_guidance_rescale", 0.0, 0.9),
    ("validation_num_inference_steps", 1, 2),
    ("validation_noise_scheduler", "ddim", "euler-a"),
    ("validation_seed", 1, 2),
])
def test_option_changes_the_image(parts, tmp_path: Path, option: str, first, second) -> None:
    one = pixels(parts, tmp_path, "one", **{option: first})
    assert np.array_equal(one, pixels(parts, tmp_path, "again", **{option: first})), "not repeatable"
    assert not np.array_equal(one, pixels(parts, tmp_path, "two", **{option: second}))


def test_noise_scheduler_choice_builds_that_scheduler(parts, tmp_path: Path) -> None:
    from simpletuner.validation.pipeline import load_inference_scheduler

    assert type(load_inference_scheduler(parts.family, parts.source, config_with(validation_noise_scheduler="unipc"))
                ).__name__ == "UniPCMultistepScheduler"
    stock = json.loads((Path(parts.source.base) / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert type(load_inference_scheduler(parts.family, parts.source, config_with())).__name__ == stock


def test_randomize_draws_new_seeds_without_touching_training_randomness(parts, tmp_path: Path) -> None:
    validation, trainer = validation_and_trainer(parts, config_with(output_dir=str(tmp_path), validation_randomize=True))
    torch.manual_seed(0)
    random.seed(0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    validation.after_step(trainer)
    trainer.state.global_step = 6
    validation.after_step(trainer)
    seeds = {json.loads((tmp_path / "validation_images" / f"step_{step:06d}" / "manifest.json").read_text())
             ["images"][0]["seed"] for step in (4, 6)}
    assert len(seeds) == 2
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_benchmark_draws_the_base_model_and_disable_benchmark_skips_it(parts, tmp_path: Path) -> None:
    (base,) = validate(parts, tmp_path / "bench", step=0, at_start=True)
    assert base["weights"] == "base"
    assert validate(parts, tmp_path / "off", step=0, at_start=True, disable_benchmark=True) == []
    (trained,) = validate(parts, tmp_path / "trained", step=4)
    assert not np.array_equal(base["pixels"], trained["pixels"]), "the benchmark drew with the adapter on"


def test_validation_on_startup_validates_a_resumed_run_at_once(parts, tmp_path: Path) -> None:
    assert validate(parts, tmp_path / "plain", step=2, at_start=True) == []
    (entry,) = validate(parts, tmp_path / "startup", step=2, at_start=True, validation_on_startup=True)
    assert entry["weights"] == "trained"


@pytest.mark.parametrize("mode, weights", [("none", {"trained"}), ("ema_only", {"ema"}),
                                           ("comparison", {"trained", "ema"})])
def test_ema_validation_picks_the_weights(parts, tmp_path: Path, mode: str, weights: set) -> None:
    entries = validate(parts, tmp_path, ema=True, use_ema=True, ema_validation=mode)
    assert {e["weights"] for e in entries} == weights
    assert {e["shortname"] for e in entries} == {"validation" + ("-ema" if w == "ema" else "") for w in weights}


def test_lycoris_strength_scales_the_network_while_drawing(parts, tmp_path: Path) -> None:
    lycoris = dict(lora_type="lycoris", lycoris_config=str(REPO / "config" / "lycoris_config.json.example"))
    base = pixels(parts, tmp_path, "base", step=0, at_start=True, **lycoris)
    off = pixels(parts, tmp_path, "off", validation_lycoris_strength=0.0, **lycoris)
    full = pixels(parts, tmp_path, "full", validation_lycoris_strength=1.0, **lycoris)
    assert np.array_equal(base, off)
    assert not np.array_equal(base, full)


def test_torch_compile_compiles_the_pipeline_denoiser(parts, tmp_path: Path) -> None:
    config = config_with(output_dir=str(tmp_path), validation_torch_compile=True)
    validation, trainer = validation_and_trainer(parts, config)
    pipeline = validation._build(trainer.denoiser)
    assert isinstance(pipeline.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert pipeline.unet._orig_mod is trainer.denoiser


# --------------------------------------------------------------- prompts


def test_prompt_sources_and_unconditional_row() -> None:
    captions = {"cats": ["a cat", "a grey cat", "a black cat"], "dogs": ["a dog"]}
    values = dict(validation_prompt="a red square", validation_prompt_library=True, validation_using_datasets=True)
    prompts = all_prompts(values, captions, seed=3)
    names = [p.shortname for p in prompts]
    assert names[0] == "validation" and names[-1] == UNCONDITIONAL and prompts[-1].prompt == ""
    assert set(BUILTIN_PROMPTS) <= set(names)
    chosen = {p.shortname: p for p in prompts if p.dataset_id}
    assert set(chosen) == {"cats", "dogs"} and chosen["cats"].prompt in captions["cats"]
    assert chosen["cats"].dataset_id == "cats"
    # The same caption on every rank and every resume, for the same seed.
    assert all_prompts(values, captions, seed=3) == prompts
    assert UNCONDITIONAL not in [p.shortname for p in all_prompts({**values, "validation_disable_unconditional": True},
                                                                  captions, seed=3)]
    assert all_prompts({"validation_prompt_library": False}, captions, seed=3) == []


def test_user_library_shortnames_become_safe_unique_file_names(tmp_path: Path) -> None:
    library = tmp_path / "lib.json"
    library.write_text(json.dumps({"a/b c": "one", "validation": "two"}), encoding="utf-8")
    prompts = all_prompts({"validation_prompt": "zero", "user_prompt_library": str(library),
                           "validation_disable_unconditional": True}, {}, seed=0)
    assert [(p.shortname, p.prompt) for p in prompts] == [("validation", "zero"), ("a_b_c", "one"),
                                                          ("validation-2", "two")]
