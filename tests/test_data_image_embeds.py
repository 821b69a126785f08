"""``dataset_type: image_embeds`` and the ``image_embeds`` key: latents kept apart from their images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from family_harness import train_in_process, write_two_class_project
from simpletuner.data.drift import has_cached_latents
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError, DataError
from simpletuner.storage.datasets import latents_of, remote_storages
from simpletuner.storage.s3 import S3Storage


def _image(tmp_path: Path, dataset_id: str = "photos", **extra) -> dict:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    entry = {"id": dataset_id, "instance_data_dir": str(folder), "cache_dir_vae": str(tmp_path / "vae" / dataset_id)}
    entry.update(extra)
    return entry


def _text(tmp_path: Path) -> dict:
    return {"id": "text", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "text")}


def _embeds(tmp_path: Path, **extra) -> dict:
    entry = {"id": "vae-cache", "dataset_type": "image_embeds", "type": "local", "cache_dir": str(tmp_path / "shared")}
    entry.update(extra)
    return entry


def _error(entries: list) -> str:
    with pytest.raises(ConfigError) as info:
        parse_data_backend_config(entries, {})
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ schema


def test_shared_image_embeds_dataset_gives_each_image_dataset_its_own_folder(tmp_path: Path) -> None:
    config = parse_data_backend_config([
        _image(tmp_path, "faces", image_embeds="vae-cache"), _image(tmp_path, "hands", image_embeds="vae-cache"),
        _image(tmp_path, "plain"), _text(tmp_path), _embeds(tmp_path),
    ], {})
    assert [d.id for d in config.image_datasets] == ["faces", "hands", "plain"]  # not trained on itself
    assert [e.id for e in config.image_embed_datasets] == ["vae-cache"]
    faces, hands, plain = config.image_datasets
    assert latents_of(faces).location() == tmp_path / "shared" / "faces"
    assert latents_of(hands).location() == tmp_path / "shared" / "hands"
    assert latents_of(plain).location() == tmp_path / "vae" / "plain" / "latents"  # without the key: as before
    assert faces.cache_dir_vae == str(tmp_path / "vae" / "faces")  # bookkeeping stays there


def test_unknown_image_embeds_id_names_the_dataset_and_lists_the_valid_ids(tmp_path: Path) -> None:
    message = _error([_image(tmp_path, image_embeds="vae-cahce"), _text(tmp_path), _embeds(tmp_path),
                      _embeds(tmp_path, id="other", cache_dir=str(tmp_path / "o"))])
    assert message.startswith("dataset 'photos': key 'image_embeds' = 'vae-cahce' names no enabled image_embeds")
    assert message.endswith("use one of: other, vae-cache")


def test_a_disabled_image_embeds_dataset_cannot_be_named(tmp_path: Path) -> None:
    message = _error([_image(tmp_path, image_embeds="vae-cache"), _text(tmp_path), _embeds(tmp_path, disabled=True)])
    assert "'vae-cache' names no enabled image_embeds dataset" in message and "dataset_type" in message


def test_image_embeds_dataset_without_cache_dir_is_refused(tmp_path: Path) -> None:
    message = _error([_image(tmp_path, image_embeds="vae-cache"), _text(tmp_path), _embeds(tmp_path, cache_dir=None)])
    assert message.startswith("dataset 'vae-cache': key 'cache_dir' is required for dataset_type image_embeds")


def test_an_image_embeds_dataset_nobody_names_is_refused(tmp_path: Path) -> None:
    message = _error([_image(tmp_path), _text(tmp_path), _embeds(tmp_path)])
    assert "dataset 'vae-cache'" in message and '"image_embeds": "vae-cache"' in message


@pytest.mark.parametrize("key, value", [("resolution", 512), ("instance_data_dir", "images"), ("default", True)])
def test_image_keys_on_an_image_embeds_dataset_are_refused(tmp_path: Path, key: str, value) -> None:
    message = _error([_image(tmp_path, image_embeds="vae-cache"), _text(tmp_path), _embeds(tmp_path, **{key: value})])
    assert message.startswith(f"dataset 'vae-cache': key {key!r} does not apply to an image_embeds dataset")


def test_image_embeds_alone_is_no_image_dataset(tmp_path: Path) -> None:
    assert "no enabled image dataset" in _error([_text(tmp_path), _embeds(tmp_path)])


def test_an_id_that_would_leave_the_shared_folder_is_refused(tmp_path: Path) -> None:
    message = _error([_image(tmp_path, "../escape", image_embeds="vae-cache"), _text(tmp_path), _embeds(tmp_path)])
    assert message.startswith("dataset '../escape':") and "must not contain '/'" in message


def test_aws_image_embeds_dataset_puts_local_images_latents_in_its_bucket(tmp_path: Path) -> None:
    aws = {"type": "aws", "aws_bucket_name": "latents-bucket", "aws_endpoint_url": "http://127.0.0.1:9",
           "aws_region_name": "us-east-1"}
    config = parse_data_backend_config([
        _image(tmp_path, image_embeds="vae-cache"), _text(tmp_path),
        _embeds(tmp_path, cache_dir=None, aws_data_prefix="emb", **aws),  # SimpleTuner's spelling: no cache_dir
    ], {})
    latents = latents_of(config.image_datasets[0])
    assert isinstance(latents, S3Storage)
    assert latents.location() == "s3://latents-bucket/emb/photos/"
    assert [s.bucket for s in remote_storages(config)] == ["latents-bucket"]  # checked at start-up like any bucket
    with pytest.raises(ConfigError, match="^dataset 'vae-cache': key 'cache_dir' = .* is a local folder"):
        parse_data_backend_config([_image(tmp_path, image_embeds="vae-cache"), _text(tmp_path),
                                   _embeds(tmp_path, **aws)], {})


# ------------------------------------------------------------------------------------------ a run


def _use_image_embeds(root: Path) -> None:
    mdb = root / "mdb.json"
    entries = json.loads(mdb.read_text(encoding="utf-8"))
    entries[0]["image_embeds"] = "vae-cache"
    entries.append({"id": "vae-cache", "dataset_type": "image_embeds", "cache_dir": str(root / "cache" / "shared")})
    mdb.write_text(json.dumps(entries), encoding="utf-8")


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_latents_are_cached_in_the_image_embeds_dataset_and_reused(
    tmp_path: Path, tiny_sdxl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_two_class_project(tmp_path, per_class=4)
    _use_image_embeds(root)
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2")
    assert "dataset 'classes' latent cache: 0 reused, 8 encoded" in _messages(caplog)
    shared = root / "cache" / "shared" / "classes"
    assert len(list(shared.rglob("*.safetensors"))) == 8
    vae = root / "cache" / "vae"
    assert not list(vae.rglob("*.safetensors*")), "no latent may land in cache_dir_vae"
    assert (vae / "discovery.json").is_file() and (vae / "dataset_settings.json").is_file()

    backends = parse_data_backend_config(json.loads((root / "mdb.json").read_text()), {})
    assert has_cached_latents(backends.image_datasets[0])

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simpletuner"):
        train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2", output_name="again")
    assert "dataset 'classes' latent cache: 8 reused, 0 encoded" in _messages(caplog)

    # Drift sees the latents where they are: a changed resolution would strand them, so it is refused.
    entries = json.loads((root / "mdb.json").read_text())
    entries[0]["resolution"] = 32
    (root / "mdb.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match="settings changed since its latents were cached"):
        train_in_process(root, tiny_sdxl, "sdxl", "--cache_only", "--train_batch_size", "2", output_name="third")
