"""--caption_dropout_probability swaps a sample's text embeds for the cached empty prompt's.

A resumed run with caption dropout repeating the uninterrupted one is shown in
test_cache_epoch_crops.py (together with per-epoch crops).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_helpers import record_batches
from family_harness import train_in_process, write_two_class_project
from simpletuner.families.base import ModelSource
from simpletuner.families.sdxl import SDXLFamily
from simpletuner.training.batches import caption_dropout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def empty_prompt(tiny_sdxl: Path) -> dict[str, torch.Tensor]:
    """The empty prompt encoded directly by the model's own text encoders."""
    family = SDXLFamily()
    return family.encode_text(family.load_text_encoders(ModelSource(str(tiny_sdxl))), [""])[0]


def _is_empty(batch: dict[str, torch.Tensor], index: int, empty: dict[str, torch.Tensor]) -> bool:
    # Pooled embeds are replaced too, not only the token embeds.
    return all(torch.allclose(batch[name][index], tensor, atol=1e-6) for name, tensor in empty.items())


def _trained(tmp_path: Path, model: Path, monkeypatch, probability: str, steps: int, batch: int) -> list:
    seen = record_batches(monkeypatch)
    root = write_two_class_project(tmp_path, per_class=4)
    train_in_process(root, model, "sdxl", "--caption_dropout_probability", probability,
                     "--train_batch_size", str(batch), "--max_train_steps", str(steps))
    return seen


def test_probability_one_trains_every_sample_on_the_empty_prompt(
    tmp_path: Path, tiny_sdxl: Path, monkeypatch, empty_prompt
) -> None:
    seen = _trained(tmp_path, tiny_sdxl, monkeypatch, "1", steps=3, batch=2)
    assert len(seen) == 3
    assert all(_is_empty(b.batch, i, empty_prompt) for b in seen for i in range(2))


def test_probability_zero_never_does(tmp_path: Path, tiny_sdxl: Path, monkeypatch, empty_prompt) -> None:
    seen = _trained(tmp_path, tiny_sdxl, monkeypatch, "0", steps=3, batch=2)
    assert not any(_is_empty(b.batch, i, empty_prompt) for b in seen for i in range(2))


def test_probability_half_drops_about_half(tmp_path: Path, tiny_sdxl: Path, monkeypatch, empty_prompt) -> None:
    seen = _trained(tmp_path, tiny_sdxl, monkeypatch, "0.5", steps=20, batch=4)
    flags = [_is_empty(b.batch, i, empty_prompt) for b in seen for i in range(4)]
    assert flags == [d for b in seen for d in b.dropped]
    assert 24 <= sum(flags) <= 56, f"{sum(flags)} of 80 dropped"


def test_draws_come_from_the_given_generator_and_none_are_taken_at_zero() -> None:
    generator = torch.Generator().manual_seed(5)
    before = generator.get_state()
    assert caption_dropout(1000, 0.0, generator) == [False] * 1000
    assert torch.equal(generator.get_state(), before), "p=0 must not move the trainer's random stream"
    first = caption_dropout(1000, 0.3, generator)
    assert 240 <= sum(first) <= 360
    assert caption_dropout(1000, 0.3, torch.Generator().manual_seed(5)) == first
