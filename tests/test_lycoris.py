"""--lora_type lycoris: validation of --lycoris_config, training, LyCORIS-format saving, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from adapter_harness import fresh_denoiser, output, train, trained_denoiser, write_lycoris_config, write_project
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "lycoris_config.json.example"
LORA_FILE = "pytorch_lora_weights.safetensors"


def _validate(tmp_path: Path, *flags: str) -> Any:
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "some/model",
            "--data_backend_config", "mdb.json", "--output_dir", "out", *flags]
    return load_config(argv, env={}, cwd=tmp_path)


def _message(tmp_path: Path, *flags: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _validate(tmp_path, *flags)
    return str(caught.value)


# ------------------------------------------------------------------ validation


def test_the_example_config_validates(tmp_path: Path) -> None:
    from simpletuner.training.lycoris_config import read_lycoris_config

    config = _validate(tmp_path, "--lora_type", "lycoris", "--lycoris_config", str(EXAMPLE))
    assert (config.lora_type, config.lycoris_config) == ("lycoris", str(EXAMPLE))
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert read_lycoris_config(str(EXAMPLE)) == example
    assert example["algo"] == "lokr" and example["apply_preset"]["target_module"] == ["Attention", "FluxAttention", "FeedForward"]
    # The example really went through the checks: the same file with one key misspelt does not.
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps({**example, "factr": example["factor"]}), encoding="utf-8")
    assert "unknown key(s) factr" in _message(tmp_path, "--lora_type", "lycoris", "--lycoris_config", str(misspelt))


@pytest.mark.parametrize("content, fragments", [
    (None, ("no such file",)),
    ("{\"algo\": \"lokr\",\n  \"factor\": }", ("invalid JSON at line 2",)),
    ("[1, 2]", ("must be a JSON object",)),
    ({"linear_dim": 4}, ("no \"algo\"", "lokr")),
    ({"algo": "lokrr"}, ("unknown algorithm 'lokrr'",)),
    ({"algo": "dylora"}, ("dylora is not supported", "cannot load")),
    ({"algo": "lokr", "factr": 4}, ("unknown key(s) factr", "would ignore", "did you mean factor?")),
    ({"algo": "lokr", "linear_dim": "big"}, ("\"linear_dim\" must be a number",)),
    ({"algo": "lokr", "apply_preset": {"unet_target_module": ["Attention"]}},
     ("unsupported key(s) unet_target_module", "target_module")),
    ({"algo": "lokr", "apply_preset": {"target_module": ["Attention"],
                                       "module_algo_map": {"Attention": {"algo": "tlora"}}}},
     ("apply_preset.module_algo_map.Attention.algo", "tlora is not supported")),
])
def test_a_bad_lycoris_config_is_one_line_naming_the_file(tmp_path: Path, content, fragments) -> None:
    path = tmp_path / "lyco.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    message = _message(tmp_path, "--lora_type", "lycoris", "--lycoris_config", str(path))
    assert len(message.splitlines()) == 1, message
    assert f"--lycoris_config={path}" in message
    for fragment in fragments:
        assert fragment in message


def _ignored(tmp_path: Path, *flags: str) -> tuple:
    from simpletuner.config.loader import load_config

    return load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config",
                        "d.json", *flags], env={}, cwd=tmp_path).ignored


def test_lycoris_config_without_lycoris_type_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (line,) = _ignored(tmp_path, "--lycoris_config", str(EXAMPLE))
    assert line.startswith(f"--lycoris_config={EXAMPLE} has no effect: only --lora_type lycoris reads it")


def test_peft_options_beside_lycoris_are_ignored_with_a_warning(tmp_path: Path) -> None:
    # SimpleTuner configs routinely keep lora_rank next to lora_type lycoris: they must run.
    lines = _ignored(tmp_path, "--lora_type", "lycoris", "--lycoris_config", str(EXAMPLE),
                     "--lora_rank", "8", "--lora_init_type", "pissa")
    assert [line.split(" has no effect")[0] for line in lines] == ["--lora_rank=8", "--lora_init_type=pissa"]
    assert all("--lycoris_config" in line for line in lines)
    # The defaults are not "set", so a config that merely lists them says nothing.
    assert _ignored(tmp_path, "--lora_type", "lycoris", "--lycoris_config", str(EXAMPLE), "--lora_rank", "16") == ()


def test_adapter_options_of_a_full_fine_tune_are_ignored_with_a_warning(tmp_path: Path) -> None:
    lines = _ignored(tmp_path, "--model_type", "full", "--lora_type", "lycoris", "--lycoris_config", str(EXAMPLE),
                     "--lora_rank", "32")
    assert [line.split("=")[0] for line in lines] == ["--lora_type", "--lora_rank", "--lycoris_config"]
    assert all("only --model_type lora trains an adapter" in line for line in lines)


# --------------------------------------------------------- building the network


def _tiny_unet(tiny_sdxl: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")


def test_preset_is_applied_and_does_not_leak_into_the_next_network(tiny_sdxl: Path) -> None:
    from lycoris import LycorisNetwork

    from simpletuner.training.lycoris_adapter import attach_lycoris

    before = (list(LycorisNetwork.TARGET_REPLACE_MODULE), dict(LycorisNetwork.MODULE_ALGO_MAP))
    spec = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    network = attach_lycoris(_tiny_unet(tiny_sdxl), spec, str(EXAMPLE))
    names = [lora.lora_name for lora in network.loras]
    assert names and all("_attn" in name or "_ff_" in name for name in names), names[:5]
    assert (list(LycorisNetwork.TARGET_REPLACE_MODULE), dict(LycorisNetwork.MODULE_ALGO_MAP)) == before
    # Without a preset LyCORIS wraps every linear and conv layer, resnets included.
    plain = attach_lycoris(_tiny_unet(tiny_sdxl), {"algo": "loha"}, "plain.json")
    assert any("resnets" in lora.lora_name for lora in plain.loras)
    assert not any("resnets" in lora.lora_name for lora in network.loras)


def test_a_preset_matching_nothing_is_an_error(tiny_sdxl: Path) -> None:
    from simpletuner.training.lycoris_adapter import attach_lycoris

    spec = {"algo": "lokr", "apply_preset": {"target_module": ["NoSuchBlock"]}}
    with pytest.raises(ConfigError, match="--lycoris_config=x.json: matched no layer of the UNet2DConditionModel"):
        attach_lycoris(_tiny_unet(tiny_sdxl), spec, "x.json")


def test_disabling_gives_the_base_output_for_every_supported_algorithm(tiny_sdxl: Path) -> None:
    from simpletuner.training.lycoris_adapter import attach_lycoris, lycoris_disabled
    from simpletuner.training.lycoris_config import SUPPORTED_ALGOS

    unet = _tiny_unet(tiny_sdxl)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        sample=torch.randn(1, 4, 8, 8, generator=generator), timestep=torch.tensor([10]),
        encoder_hidden_states=torch.randn(1, 4, 64, generator=generator),
        added_cond_kwargs={"text_embeds": torch.randn(1, 32, generator=generator),
                           "time_ids": torch.randn(1, 6, generator=generator)},
    )
    base = output(unet, inputs)
    for algo in SUPPORTED_ALGOS:
        model = _tiny_unet(tiny_sdxl)
        network = attach_lycoris(model, {"algo": algo, "linear_dim": 4, "factor": 4}, f"{algo}.json")
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        trained = output(model, inputs)
        with lycoris_disabled(network):
            disabled = output(model, inputs)
        assert not torch.allclose(trained, base, atol=1e-4), algo
        assert torch.allclose(disabled, base, atol=1e-5), algo
        assert torch.equal(output(model, inputs), trained), f"{algo}: not re-enabled"


# ------------------------------------------------------------------ training


LOHA = {"algo": "loha", "multiplier": 1.0, "linear_dim": 4, "linear_alpha": 2,
        "apply_preset": {"target_module": ["FluxAttention", "FeedForward"]}}


@pytest.mark.slow
@pytest.mark.parametrize("family, spec", [
    ("sdxl", json.loads(EXAMPLE.read_text(encoding="utf-8"))),  # lokr, per-module factors
    ("flux", LOHA),
], ids=["sdxl-lokr", "flux-loha"])
def test_trained_lycoris_reloads_with_lycoris_own_loader(tmp_path: Path, request, family: str, spec: dict) -> None:
    from lycoris import create_lycoris_from_weights

    model = request.getfixturevalue(f"tiny_{family}")
    project = write_project(tmp_path)
    config = write_lycoris_config(tmp_path, spec)
    trainer, recorded = train(project, model, family, "--lora_type", "lycoris", "--lycoris_config", str(config),
                              "--max_train_steps", "3", "--learning_rate", "1e-3", "--train_batch_size", "2",
                              record=True)
    trained = trained_denoiser(trainer)
    network = trainer.trainable.network
    # Only the LyCORIS weights trained; the base weights are the ones on disk.
    assert {id(p) for p in trainer.trained_parameters} == {id(p) for p in network.parameters()}
    base_model = fresh_denoiser(trainer)
    base_state = base_model.state_dict()
    for name, value in trained.state_dict().items():
        if not name.startswith("lycoris_network."):
            assert torch.equal(value, base_state[name]), name

    inputs = recorded.inputs[-1]
    expected = output(trained, inputs)
    assert not torch.allclose(expected, output(base_model, inputs), atol=1e-4), "training changed nothing"
    file = project / "output" / LORA_FILE
    reloaded_model = fresh_denoiser(trainer)
    reloaded, _ = create_lycoris_from_weights(spec["multiplier"], str(file), reloaded_model)
    reloaded.apply_to()
    assert len(reloaded.loras) == len(network.loras)
    assert torch.allclose(output(reloaded_model, inputs), expected, atol=1e-5)
    assert json.loads(_header(file)["lycoris_config"]) == spec


def _header(file: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as handle:
        return handle.metadata()


@pytest.mark.slow
def test_lycoris_resumes_exactly_and_averages_with_ema(tmp_path: Path, tiny_sdxl: Path) -> None:
    from lycoris import create_lycoris_from_weights

    project = write_project(tmp_path)
    config = write_lycoris_config(tmp_path, {"algo": "lokr", "linear_dim": 4, "linear_alpha": 1, "factor": 4,
                                             "apply_preset": {"target_module": ["Attention"]}})
    flags = ("--lora_type", "lycoris", "--lycoris_config", str(config), "--max_train_steps", "4",
             "--checkpointing_steps", "2", "--learning_rate", "1e-3", "--train_batch_size", "2",
             "--mixed_precision", "bf16", "--use_ema", "--ema_decay", "0.9")
    trainer, _ = train(project, tiny_sdxl, "sdxl", *flags)
    output_dir = project / "output"
    live = load_file(output_dir / LORA_FILE)
    averaged = load_file(output_dir / "ema" / LORA_FILE)
    assert live.keys() == averaged.keys()
    assert any(not torch.equal(live[k], averaged[k]) for k in live), "EMA weights equal the live ones"
    # The checkpoint holds the adapter in the same LyCORIS format.
    assert load_file(output_dir / "checkpoint-2" / LORA_FILE).keys() == live.keys()
    network, _ = create_lycoris_from_weights(1.0, str(output_dir / "ema" / LORA_FILE), fresh_denoiser(trainer))
    assert len(network.loras) == len(trainer.trainable.network.loras)

    shutil.copytree(output_dir / "checkpoint-2", project / "resumed" / "checkpoint-2")
    train(project, tiny_sdxl, "sdxl", *flags, "--resume_from_checkpoint", "latest", output_name="resumed")
    resumed = load_file(project / "resumed" / LORA_FILE)
    resumed_average = load_file(project / "resumed" / "ema" / LORA_FILE)
    for key in live:
        assert torch.equal(live[key], resumed[key]), key
        assert torch.equal(averaged[key], resumed_average[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("family_name", ["sdxl", "legacy", "kolors", "sd3", "flux", "pixart_sigma"])
def test_the_example_preset_reaches_the_attention_of_every_family(family_name: str, request) -> None:
    from simpletuner.families.base import ModelSource
    from simpletuner.families.registry import get_family
    from simpletuner.training.lycoris_adapter import unmatched_targets

    family = get_family(family_name)
    denoiser = family.load_denoiser(ModelSource(base=str(request.getfixturevalue(f"tiny_{family_name}"))))
    preset = json.loads(EXAMPLE.read_text(encoding="utf-8"))["apply_preset"]
    assert unmatched_targets(denoiser, preset, family) == []  # no warning with the shipped example
    attention = [module for module in denoiser.modules() if type(module).__name__ in family.attention_class_names]
    assert attention, f"{family_name} declares attention classes its denoiser does not have"
    # The old example's 'Attention' alone misses Flux's attention, and says so.
    old = unmatched_targets(denoiser, {"target_module": ["Attention", "FeedForward"]}, family)
    assert old == ([] if family_name != "flux" else [
        "target_module 'Attention' matches no layer of the FluxTransformer2DModel; its attention class is FluxAttention"])
