"""``type: "huggingface"`` datasets, built here with the ``datasets`` library (no network)."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets
import pytest
from PIL import Image

from simpletuner.caching.keys import latent_key
from simpletuner.data import huggingface_discovery
from simpletuner.data.huggingface_discovery import ROWS_FILE, discover_huggingface, read_bytes_size
from simpletuner.data.pipeline import prepare_training_data
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]

# (size, colour, nested caption, plain caption): row 1 has no nested caption and falls back to "text"
ROWS = [((48, 32), "red", "a red photo", "red"), ((32, 48), "blue", None, "a blue photo"),
        ((32, 32), "green", "a green photo", "green"), ((64, 32), "white", "a white photo", "white")]


class Config:
    train_batch_size = 1


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_dataset prepares parquet folders into its cache: keep that inside the test's folder
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _image(size: Tuple[int, int], colour: str) -> bytes:
    # BMP: its byte count depends on the size alone, so a changed image of the same size differs only in
    # its bytes, and only their hash can tell the versions apart
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "BMP")
    return buffer.getvalue()


def _rows(rows: List[tuple] = ROWS, broken: bytes = b"") -> Dict[str, list]:
    images = [{"bytes": _image(size, colour), "path": None} for size, colour, _, _ in rows]
    table: Dict[str, list] = {
        "image": images,
        "meta": [{"caption": nested} for _, _, nested, _ in rows],
        "text": [plain for _, _, _, plain in rows],
        "w": [size[0] for size, *_ in rows],
        "h": [size[1] for size, *_ in rows],
    }
    if broken:  # a row whose bytes are no image, with a caption, so only the image can fail it
        table["image"].append({"bytes": broken, "path": None})
        table["meta"].append({"caption": "broken"})
        table["text"].append("broken")
        table["w"].append(32)
        table["h"].append(32)
    return table


FEATURES = datasets.Features({"image": datasets.Image(), "meta": {"caption": datasets.Value("string")},
                              "text": datasets.Value("string"), "w": datasets.Value("int32"),
                              "h": datasets.Value("int32")})


def _arrow(folder: Path, **kwargs: Any) -> Path:
    datasets.Dataset.from_dict(_rows(**kwargs), features=FEATURES).save_to_disk(str(folder))
    return folder


def _parquet(folder: Path, **kwargs: Any) -> Path:
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(_rows(**kwargs), features=FEATURES).to_parquet(str(folder / "train-00000.parquet"))
    return folder


def _entry(tmp_path: Path, name: Path, **keys: Any) -> dict:
    return {"id": "hf", "type": "huggingface", "dataset_name": str(name), "caption_column": "meta.caption",
            "fallback_caption_column": "text", "cache_dir_vae": str(tmp_path / "vae"), "resolution": 32,
            "aspect_bucket_alignment": 16, **keys}


def _config(tmp_path: Path, name: Path, **keys: Any):
    return parse_data_backend_config(
        [_entry(tmp_path, name, **keys), {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}],
        {})


class CountingReader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> Tuple[int, int]:
        self.calls += 1
        return read_bytes_size(data)


def _discover(tmp_path: Path, name: Path, reader: Optional[CountingReader] = None, **keys: Any):
    dataset = _config(tmp_path, name, **keys).image_datasets[0]
    return discover_huggingface(dataset, progress=False, reader=reader or CountingReader())


# ------------------------------------------------------------------------------------------ discovery


def test_arrow_folder_sizes_come_from_headers_captions_from_nested_column_with_fallback(tmp_path: Path) -> None:
    reader = CountingReader()
    found = _discover(tmp_path, _arrow(tmp_path / "arrow", broken=b"not an image at all"), reader)
    assert [(r.relative_path, r.width, r.height, r.caption) for r in found.records] == [
        ("row-00000000", 48, 32, "a red photo"), ("row-00000001", 32, 48, "a blue photo"),  # fallback
        ("row-00000002", 32, 32, "a green photo"), ("row-00000003", 64, 32, "a white photo")]
    assert reader.calls == 5 and found.header_reads == 5  # every row with bytes, once
    assert found.skipped == {"not an image": ["row-00000004"]}
    assert "5 image files found, 4 usable, 1 skipped" in found.summary()
    assert found.records[1].storage.read("row-00000001") == _image((32, 48), "blue")  # what caching will read


def test_size_columns_mean_no_image_is_read_and_plan_buckets_and_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an image was read during discovery")

    monkeypatch.setattr(Image, "open", never)
    monkeypatch.setattr(huggingface_discovery, "image_bytes", never)
    reader = CountingReader()
    rows = [((48, 32), "red", "wide", "x"), ((32, 48), "blue", "tall", "x"), ((32, 32), "green", "square", "x")]
    table = _rows(rows)
    table["w"], table["h"] = [96, 40, 64], [64, 80, 64]  # not the images' real sizes: the columns must win
    datasets.Dataset.from_dict(table, features=FEATURES).save_to_disk(str(tmp_path / "v1"))
    found = _discover(tmp_path, tmp_path / "v1", reader, width_column="w", height_column="h")
    assert reader.calls == 0
    assert [(r.width, r.height, r.caption) for r in found.records] == [(96, 64, "wide"), (40, 80, "tall"),
                                                                       (64, 64, "square")]
    data = prepare_training_data(Config, _config(tmp_path, tmp_path / "v1", width_column="w", height_column="h"),
                                 show_progress=False)
    assert sorted(s.original_size for s in data.samples["hf"]) == [(64, 64), (64, 96), (80, 40)]
    assert data.report.batches_per_epoch == 3

    # one image replaced (other bytes, other length): only its row gets a new cache key
    rows[1] = ((40, 48), "black", "tall", "x")
    table = {**_rows(rows), "w": table["w"], "h": table["h"]}
    datasets.Dataset.from_dict(table, features=FEATURES).save_to_disk(str(tmp_path / "v2"))
    again = prepare_training_data(Config, _config(tmp_path, tmp_path / "v2", width_column="w", height_column="h"),
                                  show_progress=False)
    before = {s.record.relative_path: latent_key(s, "vae", "norm") for s in data.samples["hf"]}
    after = {s.record.relative_path: latent_key(s, "vae", "norm") for s in again.samples["hf"]}
    assert [name for name in sorted(before) if before[name] != after[name]] == ["row-00000001"]


def test_a_rows_storage_survives_pickling_for_loader_processes(tmp_path: Path) -> None:
    found = _discover(tmp_path, _parquet(tmp_path / "shards"))
    copy = pickle.loads(pickle.dumps(found.records[3]))
    assert copy.storage.read("row-00000003") == _image((64, 32), "white")  # loads the dataset again itself


def test_parquet_folder_loads_through_load_dataset_and_a_list_of_caption_columns(tmp_path: Path) -> None:
    found = _discover(tmp_path, _parquet(tmp_path / "shards"), caption_column=["text", "meta.caption"],
                      fallback_caption_column=None)
    assert [r.caption for r in found.records] == ["red", "a blue photo", "green", "white"]  # first non-empty
    assert [r.width for r in found.records] == [48, 32, 32, 64]


def test_unchanged_dataset_reads_nothing_and_a_changed_row_is_the_only_one_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _discover(tmp_path, _arrow(tmp_path / "v1"))
    assert (tmp_path / "vae" / ROWS_FILE).is_file()

    image_reads: List[int] = []
    counted = huggingface_discovery.image_bytes
    monkeypatch.setattr(huggingface_discovery, "image_bytes", lambda cell: image_reads.append(1) or counted(cell))
    again = CountingReader()
    second = _discover(tmp_path, tmp_path / "v1", again)
    assert again.calls == 0 and second.header_reads == 0 and not image_reads, "an unchanged dataset was read"
    assert second.records == first.records

    changed = list(ROWS)
    changed[2] = ((32, 32), "black", "a green photo", "green")  # same size and caption, other pixels
    edited = CountingReader()
    third = _discover(tmp_path, _arrow(tmp_path / "v2", rows=changed), edited)
    assert edited.calls == 1, "only the changed row's header may be read"

    def keys(found) -> List[str]:
        data = prepare_training_data(Config, _config(tmp_path, Path(found)), show_progress=False)
        return [latent_key(s, "vae", "norm") for s in data.samples["hf"]]

    before, after = keys(tmp_path / "v1"), keys(tmp_path / "v2")
    assert [b == a for b, a in zip(before, after)] == [True, True, False, True]
    assert third.records[2].mtime_ns != first.records[2].mtime_ns


def test_a_row_that_fails_to_decode_while_caching_is_skipped_at_discovery_next_time(tmp_path: Path) -> None:
    folder = _arrow(tmp_path / "a", broken=b"no image, but the size columns vouch for it")
    config = _config(tmp_path, folder, width_column="w", height_column="h")
    data = prepare_training_data(Config, config, show_progress=False)
    assert len(data.samples["hf"]) == 5  # nothing at discovery reads the bytes
    data.exclude({"hf": ["row-00000004"]})  # what caching does with an image that does not decode
    assert data.discovery["hf"].skipped == {"cannot be decoded": ["row-00000004"]}
    again = prepare_training_data(Config, config, show_progress=False)
    assert [s.record.relative_path for s in again.samples["hf"]] == [f"row-0000000{i}" for i in range(4)]
    assert again.discovery["hf"].skipped == {"cannot be decoded": ["row-00000004"]}


@pytest.mark.parametrize("sized", [False, True])
def test_an_image_folder_dataset_keeps_file_paths_and_they_are_read(tmp_path: Path, sized: bool) -> None:
    folder = tmp_path / "files"  # load_dataset makes an imagefolder of it: its cells hold paths, not bytes
    folder.mkdir()
    metadata = []
    for name, size in (("a.png", (48, 32)), ("b.png", (32, 48))):
        Image.new("RGB", size, "red").save(folder / name)
        metadata.append({"file_name": name, "text": name[0], "w": size[0], "h": size[1]})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metadata))
    keys = {"width_column": "w", "height_column": "h"} if sized else {}
    found = _discover(tmp_path, folder, caption_column="text", fallback_caption_column=None, **keys)
    assert [(r.width, r.height, r.size_bytes, r.caption) for r in found.records] == [
        (48, 32, (folder / "a.png").stat().st_size, "a"), (32, 48, (folder / "b.png").stat().st_size, "b")]
    assert found.records[1].storage.read("row-00000001") == (folder / "b.png").read_bytes()


def test_an_unchanged_parquet_folder_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = _parquet(tmp_path / "shards")
    first = _discover(tmp_path, shards)
    counted = huggingface_discovery.image_bytes
    image_reads: List[int] = []
    monkeypatch.setattr(huggingface_discovery, "image_bytes", lambda cell: image_reads.append(1) or counted(cell))
    assert _discover(tmp_path, shards).records == first.records and not image_reads  # same fingerprint
    os.utime(shards / "train-00000.parquet")  # a shard rewritten: the dataset is looked at again
    assert _discover(tmp_path, shards).records == first.records and len(image_reads) == 4


def test_rows_without_a_caption_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [((32, 32), "red", None, ""), ((32, 32), "blue", "blue", "")]
    found = _discover(tmp_path, _arrow(tmp_path / "a", rows=rows))
    assert [r.caption for r in found.records] == ["blue"]
    assert found.skipped == {"no caption": ["row-00000000"]}


def test_a_hub_id_is_loaded_with_its_split_and_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[tuple] = []
    hub = datasets.Dataset.from_dict(_rows(), features=FEATURES)

    def fake_load_dataset(name: str, split: str, revision: Optional[str], num_proc: Optional[int]):
        calls.append((name, split, revision, num_proc))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    found = _discover(tmp_path, Path("someone/photos"), split="validation", revision="abc123", num_proc=2)
    assert calls == [("someone/photos", "validation", "abc123", 2)]
    assert len(found.records) == 4
    assert found.records[0].storage.location() == "someone/photos[validation]"


def test_a_hub_id_that_cannot_be_reached_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network in tests: fail at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = _one_line_error(DataError, tmp_path, Path("someone/nothing-here"))
    assert message.startswith("dataset 'hf': key 'dataset_name' = 'someone/nothing-here' cannot be loaded")


# ------------------------------------------------------------------------------------------ bad input


def _one_line_error(kind: type, tmp_path: Path, name: Path, **keys: Any) -> str:
    with pytest.raises(kind) as info:
        data = _config(tmp_path, name, **keys)
        prepare_training_data(Config, data, show_progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("dataset 'hf': key"), message
    return message


def test_bad_settings_name_the_dataset_and_the_key(tmp_path: Path) -> None:
    arrow = _arrow(tmp_path / "arrow")
    assert "'image_column' = 'picture' is not a column" in _one_line_error(
        ConfigError, tmp_path, arrow, image_column="picture")
    assert "'image_column' = 'text' holds" in _one_line_error(ConfigError, tmp_path, arrow, image_column="text")
    assert "'caption_column' = 'meta.title' is not a column" in _one_line_error(
        ConfigError, tmp_path, arrow, caption_column="meta.title")
    assert "'fallback_caption_column' = 'tags' is not a column" in _one_line_error(
        ConfigError, tmp_path, arrow, fallback_caption_column="tags")
    assert "'dataset_name' = " in _one_line_error(DataError, tmp_path, tmp_path / "nowhere")
    assert "'caption_column' is required" in _one_line_error(ConfigError, tmp_path, arrow, caption_column=None)
    assert "'caption_strategy' = 'textfile' does not apply" in _one_line_error(
        ConfigError, tmp_path, arrow, caption_strategy="textfile")
    assert "'width_column' and 'height_column' work together" in _one_line_error(
        ConfigError, tmp_path, arrow, width_column="w")
    saved = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(_rows(), features=FEATURES)}).save_to_disk(str(saved))
    assert "'split' = 'validation' is not in the saved dataset; use one of: train" in _one_line_error(
        ConfigError, tmp_path, saved, split="validation")
    assert "'split' = 'test' is not in" in _one_line_error(ConfigError, tmp_path, _parquet(tmp_path / "pq"),
                                                            split="test")


def test_huggingface_keys_on_another_type_are_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    entry = {"id": "local", "instance_data_dir": str(tmp_path / "images"), "cache_dir_vae": str(tmp_path / "v")}
    text = {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}
    with pytest.raises(ConfigError, match="^dataset 'local': key 'caption_strategy' = 'huggingface' needs 'type'"):
        parse_data_backend_config([{**entry, "caption_strategy": "huggingface"}, text], {})
    with pytest.raises(ConfigError, match="^dataset 'local': key 'image_column' applies to 'type': 'huggingface'"):
        parse_data_backend_config([{**entry, "image_column": "img"}, text], {})


@pytest.mark.slow
def test_a_missing_column_stops_train_py_with_one_line_and_exit_2(tmp_path: Path, tiny_sdxl: Path) -> None:
    arrow = _arrow(tmp_path / "arrow")
    (tmp_path / "mdb.json").write_text(json.dumps([
        _entry(tmp_path, arrow, image_column="picture"),
        {"id": "t", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}]))
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(tiny_sdxl), "--data_backend_config", "mdb.json", "--output_dir", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert re.search(r"dataset 'hf': key 'image_column' = 'picture' is not a column", result.stderr)


# ------------------------------------------------------------------------------------------ training


def _train(root: Path, model: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "ENV", "CONFIG_BACKEND")}
    env.update(OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(root / "hf-cache"))
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--model_family", "sdxl", "--pretrained_model_name_or_path",
         str(model), "--data_backend_config", "mdb.json", "--output_dir", "out", "--model_type", "lora",
         "--lora_rank", "4", "--train_batch_size", "1", "--mixed_precision", "no", "--seed", "0",
         "--checkpointing_steps", "100000", *flags],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def _mdb(root: Path, arrow: Path, shards: Path) -> None:
    text = {"id": "text", "dataset_type": "text_embeds", "cache_dir": str(root / "cache" / "text")}
    (root / "mdb.json").write_text(json.dumps([
        {**_entry(root, arrow), "id": "arrow", "cache_dir_vae": str(root / "cache" / "arrow")},
        {**_entry(root, shards, width_column="w", height_column="h", metadata_backend="huggingface",
                  caption_strategy="huggingface"), "id": "shards", "cache_dir_vae": str(root / "cache" / "shards")},
        text]))


@pytest.mark.slow
def test_sdxl_trains_on_arrow_and_parquet_datasets_and_reencodes_only_a_changed_row(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    # a bad row in each: found by its header without size columns, only when encoded with them
    arrow = _arrow(tmp_path / "arrow", broken=b"\x89PNG\r\n\x1a\n truncated")
    shards = _parquet(tmp_path / "shards", broken=b"sized by its columns, yet no image")
    _mdb(tmp_path, arrow, shards)
    log = _train(tmp_path, tiny_sdxl, "--max_train_steps", "2")
    assert "dataset 'arrow': 5 image files found, 4 usable, 1 skipped" in log
    assert re.search(r"'arrow' latent cache: 0 reused, 4 encoded\n", log), log[-3000:]
    assert re.search(r"'shards' latent cache: 0 reused, 4 encoded, 1 undecodable", log), log[-3000:]
    assert "dataset 'shards': 1 image(s) left out (cannot be decoded): row-00000004" in log
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()

    changed = list(ROWS)
    changed[1] = ((32, 48), "black", None, "a blue photo")
    _mdb(tmp_path, _arrow(tmp_path / "arrow-v2", rows=changed), shards)
    log = _train(tmp_path, tiny_sdxl, "--cache_only")
    assert re.search(r"'arrow' latent cache: 3 reused, 1 encoded", log), log[-3000:]
    assert re.search(r"'shards' latent cache: 4 reused, 0 encoded\n", log), log[-3000:]
    assert "dataset 'shards': 5 image files found, 4 usable, 1 skipped" in log  # remembered: not tried again
