"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SDXL model in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("sdxl", tmp_path_factory.mktemp("tiny_sdxl") / "model", seed=0)
