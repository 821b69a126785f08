"""The tiny T5 tokenizer/encoder builder and the tiny SD3/Flux layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from simpletuner.tools.tiny.t5 import tiny_t5_encoder, write_t5_tokenizer


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_t5_tokenizer_has_t5_ids_loads_both_ways_and_repeats(tmp_path: Path) -> None:
    from transformers import T5Tokenizer, T5TokenizerFast

    tokenizer = write_t5_tokenizer(tmp_path / "a")
    write_t5_tokenizer(tmp_path / "b")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")  # deterministic training
    assert (tmp_path / "a" / "spiece.model").is_file() and (tmp_path / "a" / "tokenizer.json").is_file()
    for loader in (T5TokenizerFast, T5Tokenizer):
        loaded = loader.from_pretrained(tmp_path / "a")
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
        ids = loaded("a red square photo of a blue circle").input_ids
        assert ids[-1] == 1 and 2 not in ids and len(set(ids)) >= 6
        assert loaded.decode(ids, skip_special_tokens=True) == "a red square photo of a blue circle"
        assert loaded("red", padding="max_length", max_length=8).input_ids[2:] == [0] * 6
    assert len(tokenizer) > 300 and "<extra_id_0>" in tokenizer.get_vocab()


def test_t5_encoder_is_seeded_and_sized_for_the_tokenizer(tmp_path: Path) -> None:
    tokenizer = write_t5_tokenizer(tmp_path)
    first, again, other = (tiny_t5_encoder(tokenizer, seed, d_model=48) for seed in (0, 0, 1))
    assert first.config.vocab_size == len(tokenizer) and first.config.d_model == 48
    ids = tokenizer(["a red cat"], return_tensors="pt").input_ids
    with torch.no_grad():
        out = first(ids).last_hidden_state
        assert out.shape == (1, ids.shape[1], 48)
        assert torch.equal(out, again(ids).last_hidden_state)
        assert not torch.equal(out, other(ids).last_hidden_state)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_tiny_flow_models_are_deterministic_and_load(tmp_path: Path, family: str, request: pytest.FixtureRequest) -> None:
    import diffusers

    from simpletuner.families.registry import get_family
    from simpletuner.tools.tiny_model import make_tiny_model

    built = request.getfixturevalue(f"tiny_{family}")
    again = make_tiny_model(family, tmp_path / "model", seed=0)
    assert _digests(built) == _digests(again)
    assert sum(p.stat().st_size for p in built.rglob("*") if p.is_file()) < 8 * 1024 * 1024
    pipeline = getattr(diffusers, get_family(family).pipeline_class_name).from_pretrained(built)
    assert pipeline.vae.config.latent_channels == 16 and pipeline.vae.config.shift_factor is not None
