"""Dataset settings SimpleTuner users give globally, path templates, and quarantine instead of deletion.

Global options (``--instance_prompt``, ``--maximum_image_size``, ``--cache_dir_vae``
...) are defaults a dataset's own key overrides; ``{model_family}`` and ``{id}``
expand in multidatabackend.json paths; ``--delete_problematic_images`` and
``--delete_unwanted_images`` move files into a quarantine beside the dataset and
never delete anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, s3_server, s3_server_session  # noqa: F401
from simpletuner.config.loader import load_config
from simpletuner.data import discovery
from simpletuner.data.pipeline import load_backends, prepare_training_data
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError
from simpletuner.training.summary import log_summary


def _images(folder: Path, count: int, size: tuple[int, int] = (64, 64), prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, (index * 40 % 256, 90, 160)).save(folder / f"{prefix}{index}.png")


def _text(tmp_path: Path, **extra: Any) -> dict:
    return {"id": "text", "dataset_type": "text_embeds", "default": True, **extra}


# ------------------------------------------------------------------------------- global defaults


def test_global_prompt_and_size_options_are_defaults_a_dataset_overrides(tmp_path: Path):
    _images(tmp_path / "a", 1)
    _images(tmp_path / "b", 1)
    entries = [
        {"id": "a", "instance_data_dir": str(tmp_path / "a"), "cache_dir_vae": str(tmp_path / "ca")},
        {"id": "b", "instance_data_dir": str(tmp_path / "b"), "cache_dir_vae": str(tmp_path / "cb"),
         "instance_prompt": "own prompt", "only_instance_prompt": False, "prepend_instance_prompt": True,
         "maximum_image_size": 2048, "target_downsample_size": 1024},
        _text(tmp_path, cache_dir=str(tmp_path / "text")),
    ]
    defaults = {"instance_prompt": "global prompt", "only_instance_prompt": True,
                "maximum_image_size": 1536, "target_downsample_size": 1280, "crop": True}
    a, b = parse_data_backend_config(entries, defaults).image_datasets
    assert (a.instance_prompt, a.only_instance_prompt, a.prepend_instance_prompt) == ("global prompt", True, False)
    assert b.prepend_instance_prompt is True
    assert (a.maximum_image_size, a.target_downsample_size) == (1536, 1280)
    assert (b.instance_prompt, b.only_instance_prompt, b.maximum_image_size) == ("own prompt", False, 2048)
    assert parse_data_backend_config(entries, {}).image_datasets[0].instance_prompt is None
    entries[0].update(instance_prompt="x")
    assert parse_data_backend_config(entries, {"prepend_instance_prompt": True}).image_datasets[0].prepend_instance_prompt


def test_global_cache_folders_and_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "data" / "flux" / "a", 1)
    _images(tmp_path / "b", 1)
    entries = [
        {"id": "a", "instance_data_dir": "data/{model_family}/{id}"},
        {"id": "b", "instance_data_dir": "b", "cache_dir_vae": "own/{model_family}-{id}"},
        _text(tmp_path),
    ]
    defaults = {"model_family": "flux", "cache_dir_vae": "cache/vae/{model_family}/{id}", "cache_dir_text": "cache/t"}
    config = parse_data_backend_config(entries, defaults)
    a, b = config.image_datasets
    assert a.instance_data_dir == str(tmp_path / "data" / "flux" / "a")
    assert a.cache_dir_vae == str(tmp_path / "cache" / "vae" / "flux" / "a")
    assert b.cache_dir_vae == str(tmp_path / "own" / "flux-b")
    assert config.text_embed_datasets[0].cache_dir == str(tmp_path / "cache" / "t")
    # A text_embeds dataset's own cache_dir wins over --cache_dir_text, and may use {model_family} too.
    entries[2] = _text(tmp_path, cache_dir="text/{model_family}")
    assert parse_data_backend_config(entries, defaults).text_embed_datasets[0].cache_dir == str(tmp_path / "text/flux")


def test_a_shared_global_cache_folder_without_id_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "a", 1)
    _images(tmp_path / "b", 1)
    entries = [{"id": "a", "instance_data_dir": "a"}, {"id": "b", "instance_data_dir": "b"},
               _text(tmp_path, cache_dir="t")]
    with pytest.raises(ConfigError) as raised:
        parse_data_backend_config(entries, {"cache_dir_vae": "cache/vae"})
    assert str(raised.value) == ("dataset 'b': key 'cache_dir_vae' is also used by dataset 'a'; give each dataset "
                                 "its own cache_dir_vae (a shared --cache_dir_vae needs {id} in it, e.g. "
                                 "cache/vae/{id})")


def test_model_family_template_without_a_family_is_one_clear_line(tmp_path: Path):
    entries = [{"id": "a", "instance_data_dir": str(tmp_path), "cache_dir_vae": "cache/{model_family}/a"},
               _text(tmp_path, cache_dir="t")]
    with pytest.raises(ConfigError) as raised:
        parse_data_backend_config(entries, {})
    assert str(raised.value) == ("dataset 'a': key 'cache_dir_vae' = 'cache/{model_family}/a' uses {model_family} "
                                 "but no --model_family is set; set --model_family or write the family's name "
                                 "in the path")


def test_global_parquet_columns_fill_a_block_that_names_none(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _images(tmp_path / "a", 1)
    pq.write_table(pa.table({"file": ["img0.png"], "text": ["a red square"]}), tmp_path / "a" / "captions.parquet")
    entries = [{"id": "a", "instance_data_dir": str(tmp_path / "a"), "cache_dir_vae": str(tmp_path / "c"),
                "caption_strategy": "parquet", "parquet": {"path": "captions.parquet"}},
               _text(tmp_path, cache_dir=str(tmp_path / "t"))]
    defaults = {"parquet_caption_column": "text", "parquet_filename_column": "file"}
    spec = parse_data_backend_config(entries, defaults).image_datasets[0].parquet
    assert (spec.caption_column, spec.filename_column) == ("text", "file")
    entries[0]["parquet"]["caption_column"] = "file"  # the dataset's own column wins
    assert parse_data_backend_config(entries, defaults).image_datasets[0].parquet.caption_column == "file"


# ------------------------------------------------------------------- through the trainer's config


def _project(tmp_path: Path, datasets: list, *flags: str) -> Any:
    backend = tmp_path / "multidatabackend.json"
    backend.write_text(json.dumps([*datasets, _text(tmp_path, cache_dir=str(tmp_path / "text"))]), encoding="utf-8")
    argv = ["--model_family", "sdxl", "--pretrained_model_name_or_path", "m", "--data_backend_config", str(backend),
            "--resolution", "64", "--resolution_type", "pixel", "--minimum_image_size", "32", *flags]
    return load_config(argv, env={}, cwd=tmp_path)  # no config/config.json there: the command line alone


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_dataset(tmp_path: Path) -> Path:
    data = tmp_path / "photos"
    _images(data, 3)
    _images(data / "sub", 1, size=(16, 16), prefix="tiny")  # below minimum_image_size
    (data / "empty.png").write_bytes(b"")
    good = (data / "img0.png").read_bytes()
    (data / "sub" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    return data


def test_problematic_and_unwanted_images_move_to_a_quarantine_and_nothing_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    data = _bad_dataset(tmp_path)
    before = _tree(data)
    dataset = {"id": "photos", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache")}
    kept = prepare_training_data(config := _project(tmp_path, [dataset]), load_backends(config), show_progress=False)
    assert _tree(data) == before, "without the flags no file moves"
    assert not (tmp_path / "photos.rejected").exists() and not kept.notes

    config = _project(tmp_path, [dataset], "--delete_problematic_images", "--delete_unwanted_images")
    prepared = prepare_training_data(config, load_backends(config), show_progress=False)
    quarantine = tmp_path / "photos.rejected"
    moved = {"empty.png", "sub/cut.png", "sub/tiny0.png"}
    assert set(_tree(quarantine)) == moved
    assert {**_tree(data), **_tree(quarantine)} == before, "every file is still somewhere, byte for byte"
    assert not moved & set(_tree(data))
    assert len(prepared.all_samples()) == 3

    caplog.set_level(logging.INFO)
    log_summary(config, "sdxl", SimpleNamespace(summary=lambda: ""), prepared, 3, 1, None)
    line = (f"dataset 'photos': moved 3 rejected image(s) to {quarantine} (empty.png, sub/cut.png, sub/tiny0.png); "
            f"nothing was deleted. To restore them, move them back into {data} under the same relative paths and "
            "run without --delete_problematic_images/--delete_unwanted_images")
    assert line in [r.getMessage() for r in caplog.records]


def test_only_the_chosen_kind_moves_and_a_name_already_in_quarantine_is_kept(tmp_path: Path):
    data = _bad_dataset(tmp_path)
    quarantine = tmp_path / "photos.rejected"
    quarantine.mkdir()
    (quarantine / "empty.png").write_bytes(b"moved on an earlier run")
    dataset = {"id": "photos", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache")}
    config = _project(tmp_path, [dataset], "--delete_problematic_images")
    prepare_training_data(config, load_backends(config), show_progress=False)
    assert (quarantine / "empty.png").read_bytes() == b"moved on an earlier run"
    assert (quarantine / "empty.1.png").read_bytes() == b""
    assert (quarantine / "sub" / "cut.png").is_file()
    assert (data / "sub" / "tiny0.png").is_file(), "too small is unwanted, not problematic: it stays"


def test_an_image_that_fails_while_caching_moves_too(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    data = tmp_path / "photos"
    _images(data, 3)
    dataset = {"id": "photos", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache")}
    config = _project(tmp_path, [dataset], "--delete_problematic_images")
    prepared = prepare_training_data(config, load_backends(config), show_progress=False)
    prepared.exclude({"photos": ["img1.png"]})  # what caching does with an image it cannot decode
    assert not (data / "img1.png").exists() and (tmp_path / "photos.rejected" / "img1.png").is_file()
    assert any("moved 1 rejected image(s)" in r.getMessage() for r in caplog.records)


def test_quarantine_in_a_bucket_uses_the_rejected_prefix(s3_server: S3Server, tmp_path: Path):  # noqa: F811
    bucket = s3_server.new_bucket()
    local = tmp_path / "upload"
    _images(local, 2)
    (local / "broken.png").write_bytes(b"not a png at all")
    s3_server.upload_folder(local, bucket, "")
    aws = {"type": "aws", "aws_bucket_name": bucket, "aws_endpoint_url": s3_server.url, "aws_region_name": "us-east-1",
           "aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}
    dataset = {"id": "pics", **aws, "cache_dir_vae": str(tmp_path / "cache")}
    config = _project(tmp_path, [dataset], "--delete_problematic_images")
    prepared = prepare_training_data(config, load_backends(config), show_progress=False)
    assert set(s3_server.keys(bucket, "")) == {"img0.png", "img1.png", "rejected/broken.png"}
    assert any("to s3://" in note.text and "rejected/" in note.text for note in prepared.notes)
    # The next run does not take the quarantine for images of the dataset.
    again = prepare_training_data(config, load_backends(config), show_progress=False)
    assert again.discovery["pics"].files_found == 2


# ------------------------------------------------------------------------- discovery and summary


def test_aspect_bucket_worker_count_sets_the_discovery_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "many"
    _images(data, 600, size=(8, 8))  # three chunks of work
    threads: set[str] = set()
    real = discovery._process_chunk
    # With more than one worker, the first two chunks must be in flight at once:
    # each waits for the other (a lone worker would break the barrier).
    together = threading.Barrier(2, timeout=30)
    met: list[bool] = []
    tickets = iter(range(10**6))  # next() on it is atomic under the GIL

    def spy(context, *chunk):
        threads.add(threading.current_thread().name)
        if waiting and next(tickets) < 2:
            try:
                together.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
        return real(context, *chunk)

    monkeypatch.setattr(discovery, "_process_chunk", spy)
    dataset = {"id": "many", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache"),
               "minimum_image_size": 1}
    waiting = False
    config = _project(tmp_path, [dataset], "--aspect_bucket_worker_count", "1")
    prepare_training_data(config, load_backends(config), show_progress=False)
    assert threads == {threading.current_thread().name}
    threads.clear()
    (tmp_path / "cache" / "discovery.json").unlink()
    waiting = True
    config = _project(tmp_path, [dataset], "--aspect_bucket_worker_count", "3")
    prepare_training_data(config, load_backends(config), show_progress=False)
    assert met == [True, True] and len(threads) > 1 and threading.current_thread().name not in threads


def test_print_filenames_lists_every_skipped_image(tmp_path: Path):
    data = tmp_path / "photos"
    _images(data, 2)
    _images(data, 5, size=(16, 16), prefix="tiny")
    dataset = {"id": "photos", "instance_data_dir": str(data), "cache_dir_vae": str(tmp_path / "cache")}
    config = _project(tmp_path, [dataset])
    short = prepare_training_data(config, load_backends(config), show_progress=False).table()
    assert "tiny0.png, tiny1.png, tiny2.png, and 2 more" in short
    config = _project(tmp_path, [dataset], "--print_filenames")
    full = prepare_training_data(config, load_backends(config), show_progress=False).table()
    assert "tiny0.png, tiny1.png, tiny2.png, tiny3.png, tiny4.png)" in full
