"""--text_encoder_N_precision: quantised encoders fill the text cache under their own key."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from adapter_harness import train, write_project
from simpletuner.config.loader import load_config
from simpletuner.families.base import ModelSource
from simpletuner.families.registry import get_family
from simpletuner.quantisation.apply import quantised_layer_names
from simpletuner.quantisation.text_encoders import identity_suffix, quantise_text_encoders


def _config(tmp_path: Path, model: Path, *flags: str):
    return load_config(["--model_family", "sdxl", "--pretrained_model_name_or_path", str(model),
                        "--data_backend_config", "mdb.json", "--output_dir", "out", *flags], env={}, cwd=tmp_path)


def test_only_the_named_encoder_is_quantised_and_its_embeds_change(tmp_path: Path, tiny_sdxl: Path) -> None:
    config = _config(tmp_path, tiny_sdxl, "--text_encoder_2_precision", "int8-quanto")
    family = get_family("sdxl", config)
    plain = family.load_text_encoders(ModelSource.from_config(config, family))
    quantised = quantise_text_encoders(family.load_text_encoders(ModelSource.from_config(config, family)),
                                       config, torch.device("cpu"))
    assert not quantised_layer_names(quantised.encoders[0])
    assert quantised_layer_names(quantised.encoders[1])
    before = family.encode_text(plain, ["a red square"])[0]
    after = family.encode_text(quantised, ["a red square"])[0]
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "int8 weights should change the embeds"


def test_the_cache_key_includes_the_precisions(tmp_path: Path, tiny_sdxl: Path) -> None:
    assert identity_suffix(_config(tmp_path, tiny_sdxl)) == ""  # existing caches keep their keys
    one = identity_suffix(_config(tmp_path, tiny_sdxl, "--text_encoder_2_precision", "int8-quanto"))
    other = identity_suffix(_config(tmp_path, tiny_sdxl, "--text_encoder_2_precision", "int4-quanto"))
    assert one and other and one != other
    # The identity the cache and prune_cache both key text embeds by carries it too.
    from simpletuner.training.caches import text_encoder_identity

    identities = set()
    for flags in ((), ("--text_encoder_2_precision", "int8-quanto")):
        config = _config(tmp_path, tiny_sdxl, *flags)
        family = get_family("sdxl", config)
        identities.add(text_encoder_identity(ModelSource.from_config(config, family), family, config))
    assert len(identities) == 2


def test_a_new_precision_re_encodes_the_text_cache(tmp_path: Path, tiny_sdxl: Path, caplog) -> None:
    project = write_project(tmp_path)
    caplog.set_level(logging.INFO, logger="simpletuner")
    train(project, tiny_sdxl, "sdxl", "--cache_only")
    caplog.clear()
    train(project, tiny_sdxl, "sdxl", "--cache_only", "--text_encoder_2_precision", "int8-quanto")
    lines = [r.getMessage() for r in caplog.records if "text-embed cache" in r.getMessage()]
    assert lines and all("0 reused" in line and "0 encoded" not in line for line in lines), lines
    caplog.clear()
    train(project, tiny_sdxl, "sdxl", "--cache_only", "--text_encoder_2_precision", "int8-quanto")
    lines = [r.getMessage() for r in caplog.records if "text-embed cache" in r.getMessage()]
    assert lines and all(", 0 encoded" in line for line in lines), lines
