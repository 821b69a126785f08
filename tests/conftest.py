"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SDXL model in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("sdxl", tmp_path_factory.mktemp("tiny_sdxl") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_pixart_sigma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random PixArt-Sigma model in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("pixart_sigma", tmp_path_factory.mktemp("tiny_pixart_sigma") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD 1.x model (epsilon, PNDM) in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("legacy", tmp_path_factory.mktemp("tiny_legacy") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_legacy_v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD 2.x-style 768-v model (v-prediction, DDIM), built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("legacy", tmp_path_factory.mktemp("tiny_legacy_v") / "model", seed=0, flavour="sd2")


@pytest.fixture(scope="session")
def tiny_kolors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Kolors model (ChatGLM3 encoder, text_proj UNet) in diffusers layout (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("kolors", tmp_path_factory.mktemp("tiny_kolors") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD3 model (CLIP-L, CLIP-G, T5, MMDiT) in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("sd3", tmp_path_factory.mktemp("tiny_sd3") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FLUX.1-dev model (CLIP-L, T5, guidance embeds) in diffusers layout, built once per session (seed 0)."""
    from simpletuner.tools.tiny_model import make_tiny_model

    return make_tiny_model("flux", tmp_path_factory.mktemp("tiny_flux") / "model", seed=0)
