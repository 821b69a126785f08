"""The VAE and the text encoders are never in memory together while caches are built.

This is what --offload_during_startup asks for (text encoders kept off the
accelerator while the VAE caches); here it holds whatever the flag says,
because the text encoders are loaded only once the VAE has been freed.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from family_harness import train_in_process, write_two_class_project
from simpletuner.families.sdxl import SDXLFamily

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("flag", ["false", "true"])
def test_text_encoders_load_only_after_the_vae_is_freed(tmp_path: Path, tiny_sdxl: Path, monkeypatch, flag: str) -> None:
    events: list[str] = []
    vaes: list[weakref.ref] = []
    real_load_vae, real_load_text, real_encode = (
        SDXLFamily.load_vae, SDXLFamily.load_text_encoders, SDXLFamily.encode_images)

    def load_vae(self, source, *args, **kwargs):
        vae = real_load_vae(self, source, *args, **kwargs)
        vaes.append(weakref.ref(vae))
        events.append("load vae")
        return vae

    def encode_images(self, vae, pixels, generators):
        events.append("encode images")
        return real_encode(self, vae, pixels, generators)

    def load_text_encoders(self, source):
        gc.collect()
        events.append("load text encoders with the VAE " + ("alive" if any(r() for r in vaes) else "freed"))
        return real_load_text(self, source)

    monkeypatch.setattr(SDXLFamily, "load_vae", load_vae)
    monkeypatch.setattr(SDXLFamily, "encode_images", encode_images)
    monkeypatch.setattr(SDXLFamily, "load_text_encoders", load_text_encoders)
    root = write_two_class_project(tmp_path, per_class=4)
    train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--vae_batch_size", "2",
                     "--offload_during_startup", flag)
    assert events == ["load vae"] + ["encode images"] * 4 + ["load text encoders with the VAE freed"]
