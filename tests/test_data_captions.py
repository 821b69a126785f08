"""Captions: filter lists, LLM openings, instance prompts, parquet / JSON Lines tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from simpletuner.data.caption_filters import apply_filters, load_filter_list, strip_llm_prefix
from simpletuner.data.discovery import discover, read_image_size
from simpletuner.data.schema import parse_data_backend_config
from simpletuner.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, captions: dict, size=(32, 24)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, caption in captions.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10, 200, 30)).save(folder / name)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return folder


def _config(tmp_path: Path, text_extra=None, **keys):
    entries = [
        {"id": "pics", "instance_data_dir": str(tmp_path / "images"), "cache_dir_vae": str(tmp_path / "vae"),
         "caption_strategy": "textfile", "resolution": 64, "aspect_bucket_alignment": 16, **keys},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": str(tmp_path / "text"),
         **(text_extra or {})},
    ]
    return parse_data_backend_config(entries, {}).image_datasets[0]


def _captions(dataset, reader=read_image_size):
    result = discover(dataset, progress=False, reader=reader)
    return {r.relative_path: r.caption for r in result.records}, result


# --- filter lists --------------------------------------------------------------------------------

def test_filter_list_kinds(tmp_path):
    path = tmp_path / "filters.txt"
    path.write_text(
        "# comments and blank lines are ignored\n\n"
        "trending on artstation\n"          # literal
        "^an? (photo|picture) of \n"         # regex
        "s/colou?r/hue/\n"                   # sed, first match only
        "s/(\\w+) and (\\w+)/\\2 and \\1/\n"  # groups
        "s/CAT/dog/gi\n"                     # every match, any case
        "s/a\\/b/slash/\n",                  # escaped slash
        encoding="utf-8",
    )
    filters = load_filter_list(str(path), "dataset 'x'")
    assert len(filters) == 6
    caption = "a photo of cat and mouse, Cat, colour colour, a/b trending on artstation"
    assert apply_filters(caption, filters) == "mouse and dog, dog, hue colour, slash"


def test_example_filter_list_loads_and_works():
    filters = load_filter_list(str(REPO / "config" / "caption_filter_list.txt.example"), "example")
    assert apply_filters("a photo of a colour cat,   trending on artstation 1024x1024", filters) == "a color cat,"


def test_filter_list_as_json_and_inline(tmp_path):
    (tmp_path / "filters.json").write_text(json.dumps(["blurry", "s/red/blue/"]))
    assert apply_filters("a blurry red car", load_filter_list(str(tmp_path / "filters.json"), "x")) == "a blue car"
    assert apply_filters("a blurry red car", load_filter_list(["blurry"], "x")) == "a red car"


def test_bad_regex_is_a_config_error_naming_the_line(tmp_path):
    (tmp_path / "f.txt").write_text("fine\ns/(unclosed/x/\n")
    with pytest.raises(ConfigError, match=r"f.txt line 2.*not a valid regular expression"):
        load_filter_list(str(tmp_path / "f.txt"), "dataset 'pics'")


def test_filters_apply_in_discovery_from_both_datasets(tmp_path):
    _images(tmp_path / "images", {"a.png": "a photo of a red car, watermark", "b.png": "watermark"})
    (tmp_path / "mine.txt").write_text("watermark\n")
    dataset = _config(tmp_path, text_extra={"caption_filter_list": ["s/red/blue/"]},
                      caption_filter_list=str(tmp_path / "mine.txt"))
    captions, result = _captions(dataset)
    assert captions == {"a.png": "a photo of a blue car,"}
    assert result.skipped == {"caption empty after filters": ["b.png"]}


def test_missing_filter_file_is_reported_up_front(tmp_path):
    _images(tmp_path / "images", {})
    with pytest.raises(ConfigError, match="'caption_filter_list'.*cannot be read"):
        _config(tmp_path, caption_filter_list=str(tmp_path / "nope.txt"))


# --- LLM openings and instance prompts -------------------------------------------------------------

@pytest.mark.parametrize(
    "caption, cleaned",
    [
        ("The image shows a cat on a mat.", "a cat on a mat."),
        ("This image depicts: a red barn", "a red barn"),
        ("In this video, a man runs", "a man runs"),
        ("Caption: two dogs", "two dogs"),
        ("the picture captures sunset over water", "sunset over water"),
        ("The imagery of war", "The imagery of war"),
        ("A dog. The image shows nothing else", "A dog. The image shows nothing else"),
    ],
)
def test_common_llm_openings(caption, cleaned):
    assert strip_llm_prefix(caption) == cleaned


def test_llm_prefix_removal_is_opt_in(tmp_path):
    _images(tmp_path / "images", {"a.png": "The image shows a cat."})
    assert _captions(_config(tmp_path))[0] == {"a.png": "The image shows a cat."}
    cleaned = _config(tmp_path, remove_common_llm_caption_prefixes=True, cache_dir_vae=str(tmp_path / "v2"))
    assert _captions(cleaned)[0] == {"a.png": "a cat."}


def test_prepend_and_only_instance_prompt(tmp_path):
    _images(tmp_path / "images", {"a.png": "a red car", "b.png": None})
    prepend = _config(tmp_path, instance_prompt="sks", prepend_instance_prompt=True)
    captions, result = _captions(prepend)
    assert captions == {"a.png": "sks a red car"} and result.skipped == {"no caption": ["b.png"]}
    only = _config(tmp_path, instance_prompt="sks", only_instance_prompt=True, cache_dir_vae=str(tmp_path / "v2"))
    assert _captions(only)[0] == {"a.png": "sks", "b.png": "sks"}  # caption files are not even needed


@pytest.mark.parametrize("key", ["prepend_instance_prompt", "only_instance_prompt"])
def test_instance_prompt_keys_need_a_prompt(tmp_path, key):
    _images(tmp_path / "images", {})
    with pytest.raises(ConfigError, match=f"'instance_prompt' is required with {key}"):
        _config(tmp_path, **{key: True})


# --- parquet / JSON Lines --------------------------------------------------------------------------

def _parquet(path: Path, rows: list):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


ROWS = [
    {"id": 1, "caption": "first caption", "tags": "tag one", "width": 32, "height": 24},
    {"id": 2, "caption": "", "tags": "fallback tags", "width": 32, "height": 24},
    {"id": 3, "caption": None, "tags": None, "width": 32, "height": 24},
    {"id": 99, "caption": "no such file", "tags": None, "width": 10, "height": 10},
]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_captions_with_fallback(tmp_path, fmt):
    _images(tmp_path / "images", {"1.png": None, "2.png": None, "3.png": None, "4.png": None})
    if fmt == "parquet":
        _parquet(tmp_path / "images" / "meta.parquet", ROWS)
        path = "meta.parquet"  # relative: looked for inside instance_data_dir first
    else:
        (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
        path = str(tmp_path / "meta.jsonl")
    dataset = _config(tmp_path, caption_strategy="parquet",
                      parquet={"path": path, "filename_column": "id", "caption_column": "caption",
                               "fallback_caption_column": "tags"})
    captions, result = _captions(dataset)
    assert captions == {"1.png": "first caption", "2.png": "fallback tags"}
    assert result.skipped == {"no caption": ["3.png"], "not in parquet table": ["4.png"]}
    assert result.table_rows_unmatched == 1 and "naming no file in the folder: 1" in result.summary()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_metadata_backend_parquet_reads_no_image(tmp_path, fmt):
    _images(tmp_path / "images", {"a.png": None, "sub/b.png": None, "c.png": None})
    nested = [64] if fmt == "jsonl" else 64  # JSON Lines cells may hold a one-entry list
    rows = [{"file": "a.png", "text": "from table", "w": 300, "h": 200},
            {"file": "sub/b.png", "text": "nested", "w": nested, "h": 128},
            {"file": "c.png", "text": "no size", "w": None, "h": 5}]
    if fmt == "parquet":
        _parquet(tmp_path / "meta.parquet", rows)
    else:
        (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dataset = _config(tmp_path, caption_strategy="parquet", metadata_backend="parquet",
                      parquet={"path": str(tmp_path / f"meta.{fmt}"), "filename_column": "file",
                               "caption_column": "text", "width_column": "w", "height_column": "h",
                               "identifier_includes_extension": True})

    def no_reads(path):
        raise AssertionError(f"read {path}")

    result = discover(dataset, progress=False, reader=no_reads)
    sizes = {r.relative_path: (r.width, r.height, r.caption) for r in result.records}
    assert sizes == {"a.png": (300, 200, "from table"), "sub/b.png": (64, 128, "nested")}
    assert result.skipped == {"no size in parquet table": ["c.png"]} and result.header_reads == 0
    # Sizes that came from the table are not trusted once discovery is asked to read the files.
    from dataclasses import replace

    by_discovery = discover(replace(dataset, metadata_backend="discovery"), progress=False)
    assert by_discovery.header_reads == 3
    assert {(r.width, r.height) for r in by_discovery.records} == {(32, 24)}


def test_parquet_config_errors(tmp_path):
    _images(tmp_path / "images", {})
    with pytest.raises(ConfigError, match="needs a 'parquet' block"):
        _config(tmp_path, caption_strategy="parquet")
    with pytest.raises(DataError, match="parquet table 'missing.parquet' not found"):
        _config(tmp_path, caption_strategy="parquet", parquet={"path": "missing.parquet"})
    _parquet(tmp_path / "m.parquet", [{"filename": "a.png", "caption": "x"}])
    with pytest.raises(ConfigError, match="unknown key caption_colum.*caption_column"):
        _config(tmp_path, caption_strategy="parquet",
                parquet={"path": str(tmp_path / "m.parquet"), "caption_colum": "x"})
    with pytest.raises(ConfigError, match="'width_column' and 'height_column'"):
        _config(tmp_path, metadata_backend="parquet", parquet={"path": str(tmp_path / "m.parquet")})
    dataset = _config(tmp_path, caption_strategy="parquet",
                      parquet={"path": str(tmp_path / "m.parquet"), "caption_column": "nope"})
    with pytest.raises(DataError, match="has no column.*nope"):
        discover(dataset, progress=False)
