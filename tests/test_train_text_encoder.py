"""--train_text_encoder with --text_encoder_lr: a LoRA on legacy's CLIP text encoder (and on
both of SDXL's), trained with live (uncached) embeds, checkpointed, resumed, and loaded back
by load_lora_weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapter_harness import train, trained_denoiser, write_project
from family_harness import CLASSES
from simpletuner.caching.keys import text_key
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError
from simpletuner.training.trained_text_encoders import split_state

TE_LR = 5e-2


def _encode(text_encoder: torch.nn.Module, tokenizer, prompt: str = "red") -> torch.Tensor:
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


@pytest.mark.parametrize("flags, message", [
    (("--model_family", "flux"), "--train_text_encoder is not implemented yet for --model_family=flux (only "
                                 "legacy, sdxl); remove it"),
    (("--lora_type", "lycoris", "--lycoris_config", "lycoris.json"),
     "--train_text_encoder with --lora_type lycoris is not implemented yet; use --lora_type standard (or "
     "--model_type full)"),
    (("--validation_prompt", "a red square"), "--train_text_encoder with validation prompts is not implemented "
                                              "yet (validation would use the untrained text encoder); remove the "
                                              "validation prompt options"),
    (("--text_encoder_1_precision", "int8-torchao"), "--train_text_encoder with --text_encoder_1_precision is "
                                                     "not implemented yet; remove --text_encoder_1_precision"),
    (("--model_family", "sdxl", "--text_encoder_2_precision", "int8-torchao"),
     "--train_text_encoder with --text_encoder_2_precision is not implemented yet; remove "
     "--text_encoder_2_precision"),
])
def test_unsupported_combinations_are_refused_in_one_line(tmp_path: Path, flags, message) -> None:
    (tmp_path / "lycoris.json").write_text('{"algo": "lokr"}', encoding="utf-8")
    flags = [str(tmp_path / flag) if flag == "lycoris.json" else flag for flag in flags]
    argv = ["--model_family", "legacy", "--pretrained_model_name_or_path", "model", "--data_backend_config",
            "mdb.json", "--output_dir", "out", "--train_text_encoder", "true", *flags]
    with pytest.raises(ConfigError) as caught:
        load_config(argv, env={}, cwd=tmp_path)
    assert str(caught.value) == message


@pytest.mark.slow
def test_text_encoder_lora_trains_at_its_own_rate_and_loads_back(tmp_path: Path, tiny_legacy: Path) -> None:
    from diffusers import StableDiffusionPipeline

    project = write_project(tmp_path)
    flags = ("--train_text_encoder", "true", "--text_encoder_lr", str(TE_LR), "--learning_rate", "1e-4",
             "--lora_rank", "4", "--train_batch_size", "2", "--checkpointing_steps", "2")
    trainer, _ = train(project, tiny_legacy, "legacy", *flags, "--max_train_steps", "2")
    text = trainer.trainable.text
    encoder_ids = {id(p) for p in text.parameters()}
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-4, TE_LR]
    assert {id(p) for p in groups[1]["params"]} == encoder_ids and encoder_ids

    # The captions were encoded live, not cached (the empty prompt still is, for caption dropout).
    store = trainer.lookup.text_stores["classes"]
    assert store.has(text_key("", trainer.lookup.text_identity))
    assert not any(store.has(text_key(caption, trainer.lookup.text_identity)) for caption in CLASSES)

    base = StableDiffusionPipeline.from_pretrained(tiny_legacy)
    before = _encode(base.text_encoder, base.tokenizer)
    trained_encoder = text.text.encoders[0].eval()
    trained = _encode(trained_encoder, base.tokenizer)
    assert not torch.allclose(trained, before, atol=1e-4), "the text encoder did not train"
    for folder in (project / "output", project / "output" / "checkpoint-2"):
        pipeline = StableDiffusionPipeline.from_pretrained(tiny_legacy)
        pipeline.load_lora_weights(str(folder))
        loaded = _encode(pipeline.text_encoder, pipeline.tokenizer)
        assert torch.allclose(loaded, trained, atol=1e-5), folder

    # Resuming restores the text encoder's LoRA from the checkpoint (no step left to train).
    resumed, _ = train(project, tiny_legacy, "legacy", *flags, "--max_train_steps", "2",
                       "--resume_from_checkpoint", "latest", output_name="output")
    for name, state in text.states().items():
        for key, value in resumed.trainable.text.states()[name].items():
            assert torch.equal(value, state[key]), key


def _sdxl_embeds(pipeline, prompt: str = "red") -> dict[str, torch.Tensor]:
    """What the SDXL UNet is conditioned on for ``prompt``: token states and the pooled vector."""
    from simpletuner.families.base import TextEncoders
    from simpletuner.families.sdxl import SDXLFamily

    text = TextEncoders(tokenizers=[pipeline.tokenizer, pipeline.tokenizer_2],
                        encoders=[pipeline.text_encoder.eval(), pipeline.text_encoder_2.eval()])
    with torch.no_grad():
        return {k: v.float().cpu() for k, v in SDXLFamily().trainable_text_embeds(text, [prompt]).items()}


@pytest.mark.slow
def test_sdxl_trains_both_text_encoders_and_saves_them_for_load_lora_weights(tmp_path: Path, tiny_sdxl: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    project = write_project(tmp_path)
    trainer, _ = train(project, tiny_sdxl, "sdxl", "--train_text_encoder", "true", "--text_encoder_lr", str(TE_LR),
                       "--lora_rank", "4", "--train_batch_size", "2", "--max_train_steps", "2")
    text = trainer.trainable.text
    assert text.components == ("text_encoder", "text_encoder_2")
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-4, TE_LR]

    base = _sdxl_embeds(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl))
    trained_pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    trained_pipeline.text_encoder, trained_pipeline.text_encoder_2 = text.text.encoders
    trained = _sdxl_embeds(trained_pipeline)
    # Both encoders learnt: the token states hold both encoders' outputs side by side
    # (text_encoder's first), the pooled vector is text_encoder_2's alone.
    width = trained_pipeline.text_encoder.config.hidden_size
    assert not torch.allclose(trained["prompt_embeds"][..., :width], base["prompt_embeds"][..., :width], atol=1e-4)
    assert not torch.allclose(trained["prompt_embeds"][..., width:], base["prompt_embeds"][..., width:], atol=1e-4)
    assert not torch.allclose(trained["pooled_prompt_embeds"], base["pooled_prompt_embeds"], atol=1e-4)

    saved = set(load_file(str(project / "output" / "pytorch_lora_weights.safetensors")))
    assert any(k.startswith("text_encoder.") for k in saved) and any(k.startswith("text_encoder_2.") for k in saved)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipeline.load_lora_weights(str(project / "output"))
    loaded = _sdxl_embeds(pipeline)
    for name, value in trained.items():
        assert torch.allclose(loaded[name], value, atol=1e-5), name


def _lora_layer_weights(state: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """The LoRA up-projections (lora_B, zero at init) inside one CLIP encoder layer."""
    return {k: v for k, v in state.items() if f"encoder.layers.{layer}." in k and "lora_B" in k}


@pytest.mark.slow
def test_limit_and_freeze_encoder_stop_the_text_encoder_where_they_say(tmp_path: Path, tiny_legacy: Path) -> None:
    from simpletuner.training.trainable import LORA_FILE, TEXT_WEIGHTS_FILE, WEIGHTS_FILE

    project = write_project(tmp_path)
    # 4 steps at --text_encoder_limit 50: the encoder trains in steps 1-2 only; layer 0 of its 2 stays frozen.
    trainer, _ = train(project, tiny_legacy, "legacy", "--train_text_encoder", "true", "--text_encoder_lr",
                       str(TE_LR), "--lora_rank", "4", "--train_batch_size", "2", "--max_train_steps", "4",
                       "--checkpointing_steps", "1", "--text_encoder_limit", "50", "--freeze_encoder", "true",
                       "--freeze_encoder_strategy", "before", "--freeze_encoder_before", "1")
    output = project / "output"
    text = [load_file(str(output / f"checkpoint-{step}" / TEXT_WEIGHTS_FILE)) for step in (1, 2, 3, 4)]
    final = trainer.trainable.text.states()["text_encoder"]
    assert all(torch.equal(final[k], v) for k, v in split_state(text[3], ["text_encoder"])["text_encoder"].items())

    # Trained in steps 1 and 2, frozen from step 3 on ...
    assert not _same(text[0], text[1]), "the text encoder did not train in step 2"
    assert _same(text[1], text[2]) and _same(text[2], text[3]), "the text encoder trained past --text_encoder_limit"
    # ... while the denoiser trained on.
    denoiser = [load_file(str(output / f"checkpoint-{step}" / WEIGHTS_FILE)) for step in (2, 4)]
    assert not _same(*denoiser)

    # Layer 0's LoRA stayed at its zero init; layer 1's learnt.
    frozen, trained = _lora_layer_weights(final, 0), _lora_layer_weights(final, 1)
    assert frozen and trained
    assert all(not v.any() for v in frozen.values()), "a --freeze_encoder layer trained"
    assert all(v.any() for v in trained.values())

    # The disk-space estimate of a checkpoint counts the text encoders' LoRA, in both files that hold it.
    folder = output / "checkpoint-4"
    on_disk = sum(t.numel() * t.element_size() for name in (WEIGHTS_FILE, TEXT_WEIGHTS_FILE, LORA_FILE)
                  for t in load_file(str(folder / name)).values())
    assert trainer.trainable.checkpoint_bytes(trained_denoiser(trainer)) == on_disk


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy, frozen", [
    ("before", [0, 1]), ("after", [5, 6, 7]), ("between", [2, 3, 4]), ("outside", [0, 1, 5, 6, 7]),
])
def test_freeze_strategies_pick_the_layers_simpletuner_names(strategy: str, frozen: list[int]) -> None:
    from simpletuner.training.encoder_layers import layer_frozen

    assert [i for i in range(8) if layer_frozen(i, strategy, before=2, after=4)] == frozen


@pytest.mark.slow
@pytest.mark.parametrize("save", [True, False])
def test_full_fine_tune_trains_the_text_encoder_and_saves_it_only_when_asked(tmp_path: Path, tiny_legacy: Path,
                                                                            save: bool) -> None:
    from transformers import CLIPTextModel, CLIPTokenizer

    project = write_project(tmp_path)
    trainer, _ = train(project, tiny_legacy, "legacy", "--model_type", "full", "--train_text_encoder", "true",
                       "--text_encoder_lr", "1e-2", "--learning_rate", "1e-5", "--train_batch_size", "2",
                       "--max_train_steps", "1", "--save_text_encoder", str(save).lower())
    tokenizer = CLIPTokenizer.from_pretrained(tiny_legacy, subfolder="tokenizer")
    base = _encode(CLIPTextModel.from_pretrained(tiny_legacy, subfolder="text_encoder"), tokenizer)
    trained = _encode(trainer.trainable.text.text.encoders[0].eval(), tokenizer)
    assert not torch.allclose(trained, base, atol=1e-4), "the text encoder's own weights did not train"
    saved = _encode(CLIPTextModel.from_pretrained(project / "output", subfolder="text_encoder"), tokenizer)
    assert torch.allclose(saved, trained if save else base, atol=1e-6)


@pytest.mark.slow
def test_sdxl_full_fine_tune_saves_both_trained_text_encoders(tmp_path: Path, tiny_sdxl: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    project = write_project(tmp_path)
    train(project, tiny_sdxl, "sdxl", "--model_type", "full", "--train_text_encoder", "true", "--text_encoder_lr",
          "1e-2", "--learning_rate", "1e-5", "--train_batch_size", "2", "--max_train_steps", "1",
          "--save_text_encoder", "true")
    base = _sdxl_embeds(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl))
    saved = _sdxl_embeds(StableDiffusionXLPipeline.from_pretrained(project / "output"))
    width = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl).text_encoder.config.hidden_size
    # The saved pipeline's encoders are the trained ones: both halves of the token states and
    # the pooled vector (text_encoder_2's) differ from the base model's.
    assert not torch.allclose(saved["prompt_embeds"][..., :width], base["prompt_embeds"][..., :width], atol=1e-4)
    assert not torch.allclose(saved["prompt_embeds"][..., width:], base["prompt_embeds"][..., width:], atol=1e-4)
    assert not torch.allclose(saved["pooled_prompt_embeds"], base["pooled_prompt_embeds"], atol=1e-4)
