"""The wizard's proposal: settings that fit the stated memory with a margin, from the memory estimator."""

from __future__ import annotations

from pathlib import Path

import pytest

from simpletuner.wizard.proposal import MARGIN, estimate_needed, propose

MIB = 2**20


@pytest.fixture
def answers(tiny_sdxl: Path) -> dict:
    return {"model_family": "sdxl", "pretrained_model_name_or_path": str(tiny_sdxl), "model_type": "lora",
            "lora_type": "standard", "lora_rank": 16}


def test_plenty_of_memory_keeps_full_size_and_grows_the_batch(answers: dict):
    proposal = propose(answers, 1000 * 2**30, on_gpu=False)
    assert proposal.values["resolution"] == 1024  # the family's own size
    assert proposal.values["gradient_checkpointing"] is False
    assert proposal.values["train_batch_size"] == 4
    assert proposal.notes == []


def test_tight_memory_turns_on_checkpointing_before_shrinking_images(answers: dict):
    comfortable = estimate_needed(answers, {"resolution": 1024, "train_batch_size": 1}, on_gpu=False)
    checkpointed = estimate_needed(answers, {"resolution": 1024, "train_batch_size": 1,
                                             "gradient_checkpointing": True}, on_gpu=False)
    assert checkpointed < comfortable
    # Exactly what the comfortable settings need: they fit, but not with the margin kept free.
    memory = comfortable
    assert checkpointed <= MARGIN * memory
    proposal = propose(answers, memory, on_gpu=False)
    assert proposal.values["gradient_checkpointing"] is True
    assert proposal.values["base_model_precision"] == "no_change"  # the cheapest step that fits is taken
    assert proposal.values["resolution"] == 1024
    assert proposal.needed <= 0.85 * memory


def test_nothing_fits_says_so_and_offers_the_most_frugal(answers: dict):
    proposal = propose(answers, 1 * MIB, on_gpu=False)
    assert proposal.values["resolution"] == 512
    assert proposal.values["gradient_checkpointing"] is True
    assert proposal.values["base_model_precision"] == "int8-quanto"
    assert "nothing tried fits 1 MiB with a margin" in proposal.notes[0]


def test_a_hub_model_without_files_here_proposes_defaults():
    proposal = propose({"model_family": "sdxl", "pretrained_model_name_or_path": "stabilityai/sdxl-base",
                        "model_type": "lora"}, 24 * 2**30, on_gpu=False)
    assert proposal.needed is None
    assert "no memory estimate" in proposal.notes[0]
    assert proposal.values["resolution"] == 1024 and proposal.values["train_batch_size"] == 1
