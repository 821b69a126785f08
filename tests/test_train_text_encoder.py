"""--train_text_encoder with --text_encoder_lr: a LoRA on legacy's CLIP text encoder, trained
with live (uncached) embeds, checkpointed, resumed, and loaded back by load_lora_weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapter_harness import train, write_project
from family_harness import CLASSES
from simpletuner.caching.keys import text_key
from simpletuner.config.loader import load_config
from simpletuner.errors import ConfigError

TE_LR = 5e-2


def _encode(text_encoder: torch.nn.Module, tokenizer, prompt: str = "red") -> torch.Tensor:
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


@pytest.mark.parametrize("flags, message", [
    (("--model_family", "sdxl"), "--train_text_encoder is not implemented yet for --model_family=sdxl (only "
                                 "legacy); remove it"),
    (("--model_type", "full"), "--train_text_encoder trains a LoRA on the text encoder: it needs --model_type "
                               "lora and --lora_type standard"),
    (("--validation_prompt", "a red square"), "--train_text_encoder with validation prompts is not implemented "
                                              "yet (validation would use the untrained text encoder); remove the "
                                              "validation prompt options"),
    (("--text_encoder_1_precision", "int8-torchao"), "--train_text_encoder with --text_encoder_1_precision is "
                                                     "not implemented yet; remove --text_encoder_1_precision"),
])
def test_unsupported_combinations_are_refused_in_one_line(tmp_path: Path, flags, message) -> None:
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
