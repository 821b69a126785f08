"""multidatabackend.json parsing: coercion, defaults from globals, and every error path."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from simpletuner.data.schema import (
    DATASET_KEYS,
    KEYS_BY_NAME,
    load_data_backend_config,
    parse_data_backend_config,
)
from simpletuner.errors import ConfigError, DataError

GLOBALS = {
    "resolution": 512,
    "resolution_type": "pixel",
    "crop": True,
    "crop_style": "corner",
    "crop_aspect": "preserve",
    "caption_strategy": "textfile",
    "minimum_image_size": 128,
    "aspect_bucket_alignment": 16,
}


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


def _image(data_dir, tmp_path, **extra):
    entry = {"id": "photos", "instance_data_dir": str(data_dir), "cache_dir_vae": str(tmp_path / "vae")}
    entry.update(extra)
    return entry


def _text(**extra):
    entry = {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}
    entry.update(extra)
    return entry


def _write(tmp_path, payload, name="multidatabackend.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload, indent=2))
    return str(path)


def _error(entries, defaults=None, kind=ConfigError):
    with pytest.raises(kind) as info:
        parse_data_backend_config(entries, defaults or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loads_file_and_coerces_string_values(tmp_path, data_dir):
    path = _write(tmp_path, [
        _image(data_dir, tmp_path, crop="true", resolution="64", repeats="2", probability="0.5",
               crop_style="centre", resolution_type="pixel_area", aspect_bucket_alignment="8"),
        _text(default="1"),
    ])
    config = load_data_backend_config(path, {})
    (dataset,) = config.image_datasets
    assert dataset.crop is True
    assert dataset.resolution == 64
    assert dataset.repeats == 2
    assert dataset.probability == 0.5
    assert dataset.crop_style == "center"  # alias canonicalised
    assert dataset.aspect_bucket_alignment == 8
    assert config.text_embed_datasets[0].default is True
    assert config.text_embeds_for(dataset).id == "text"


def test_unset_keys_take_global_values_and_dataset_keys_win(tmp_path, data_dir):
    entries = [
        _image(data_dir, tmp_path),
        _image(data_dir, tmp_path, id="other", cache_dir_vae=str(tmp_path / "vae2"),
               resolution=256, crop=False, caption_strategy="filename"),
        _text(),
    ]
    config = parse_data_backend_config(entries, GLOBALS)
    inherited, own = config.image_datasets
    assert (inherited.resolution, inherited.resolution_type, inherited.crop) == (512, "pixel", True)
    assert (inherited.crop_style, inherited.crop_aspect) == ("corner", "preserve")
    assert inherited.caption_strategy == "textfile"
    assert inherited.minimum_image_size == 128
    assert inherited.aspect_bucket_alignment == 16
    assert (own.resolution, own.crop, own.caption_strategy) == (256, False, "filename")
    assert own.crop_style == "corner"


def test_declared_defaults_apply_without_globals(tmp_path, data_dir):
    config = parse_data_backend_config([_image(data_dir, tmp_path), _text()], {})
    dataset = config.image_datasets[0]
    assert (dataset.resolution, dataset.resolution_type) == (1024, "pixel_area")
    assert dataset.aspect_bucket_alignment == 64
    assert dataset.crop is False and dataset.repeats == 0


def test_relative_paths_resolve_against_working_directory(tmp_path, monkeypatch):
    (tmp_path / "rel_images").mkdir()
    monkeypatch.chdir(tmp_path)
    entries = [{"id": "d", "instance_data_dir": "rel_images", "cache_dir_vae": "cache/vae"}, _text()]
    config = parse_data_backend_config(entries, {})
    dataset = config.image_datasets[0]
    assert dataset.instance_data_dir == os.path.join(str(tmp_path), "rel_images")
    assert dataset.cache_dir_vae == os.path.join(str(tmp_path), "cache", "vae")
    assert config.text_embed_datasets[0].cache_dir == os.path.join(str(tmp_path), "cache", "text")


def test_unknown_key_suggests_the_close_one(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, crop_stile="center"), _text()])
    assert "dataset 'photos'" in message
    assert "unknown key crop_stile" in message and "did you mean crop_style" in message


def test_wrong_type_names_dataset_and_key(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, resolution="big"), _text()])
    assert "dataset 'photos'" in message and "'resolution'" in message and "must be a number" in message
    assert "--resolution" not in message
    message = _error([_image(data_dir, tmp_path, repeats=2.5), _text()])
    assert "dataset 'photos'" in message and "'repeats'" in message and "whole number" in message


def test_wrong_choice_lists_choices(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, crop_style="diagonal"), _text()])
    assert "dataset 'photos'" in message and "'crop_style'" in message and "corner" in message


def test_negative_repeats_rejected(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, repeats=-1), _text()])
    assert "'repeats'" in message and "at least 0" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("cache_file_suffix", "x"),
    ],
)
def test_not_implemented_values_are_rejected(tmp_path, data_dir, key, value):
    message = _error([_image(data_dir, tmp_path, **{key: value}), _text()])
    assert "dataset 'photos'" in message and repr(key) in message and "not implemented yet" in message


def test_not_implemented_key_at_its_default_is_accepted(tmp_path, data_dir):
    config = parse_data_backend_config(
        [_image(data_dir, tmp_path, prepend_instance_prompt=False), _text(write_batch_size=128)], {}
    )
    assert config.image_datasets[0].id == "photos"


def test_not_implemented_global_default_is_rejected(tmp_path, data_dir, monkeypatch):
    # Every global-default key works fully today; the guard is for the next partly built one.
    partial = dataclasses.replace(KEYS_BY_NAME["resolution_type"], implemented=("pixel", "pixel_area"))
    monkeypatch.setitem(KEYS_BY_NAME, "resolution_type", partial)
    message = _error([_image(data_dir, tmp_path), _text()], {"resolution_type": "area"})
    assert "resolution_type" in message and "not implemented yet" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data_backend_config(str(tmp_path / "nope.json"), {})


def test_a_missing_relative_file_names_where_it_was_looked_for(tmp_path, monkeypatch):
    """CONFIG_PATH=proj/config/config.json from outside proj: 'config/multidatabackend.json' is not proj's."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_data_backend_config("config/multidatabackend.json", {})
    assert str(raised.value) == (
        f"data backend config 'config/multidatabackend.json' does not exist (resolved to "
        f"{tmp_path / 'config' / 'multidatabackend.json'}; relative paths start at {tmp_path}); pass "
        "--data_backend_config pointing at your multidatabackend.json, or run from your project folder")


def test_bad_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, '[\n  {"id": "a",\n   "crop": true,,\n  }\n]')
    with pytest.raises(ConfigError) as info:
        load_data_backend_config(path, {})
    assert "multidatabackend.json line 3" in str(info.value)


def test_not_a_list(tmp_path):
    path = _write(tmp_path, {"id": "a"})
    with pytest.raises(ConfigError, match="JSON list"):
        load_data_backend_config(path, {})


def test_entry_not_an_object_and_missing_id(tmp_path, data_dir):
    assert "entry 1" in _error(["photos", _text()])
    assert "entry 1 has no 'id'" in _error([{"instance_data_dir": str(data_dir)}, _text()])


def test_duplicate_ids(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path), _image(data_dir, tmp_path), _text()])
    assert "dataset 'photos'" in message and "unique" in message


@pytest.mark.parametrize("key", ["instance_data_dir", "cache_dir_vae"])
def test_image_dataset_needs_folders(tmp_path, data_dir, key):
    entry = _image(data_dir, tmp_path)
    del entry[key]
    message = _error([entry, _text()])
    assert "dataset 'photos'" in message and repr(key) in message and "required" in message


def test_nonexistent_instance_data_dir(tmp_path):
    entry = {"id": "photos", "instance_data_dir": str(tmp_path / "missing"), "cache_dir_vae": "c"}
    message = _error([entry, _text()], kind=DataError)
    assert "dataset 'photos'" in message and "'instance_data_dir'" in message and "not a folder" in message


def test_no_enabled_image_dataset(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, disabled="true"), _text()])
    assert "no enabled image dataset" in message


def test_disabled_dataset_is_left_out_without_path_checks(tmp_path, data_dir):
    ghost = {"id": "ghost", "instance_data_dir": str(tmp_path / "gone"), "disabled": True}
    config = parse_data_backend_config([ghost, _image(data_dir, tmp_path), _text()], {})
    assert [d.id for d in config.image_datasets] == ["photos"]
    assert config.disabled_ids == ("ghost",)


def test_no_text_embeds_dataset(tmp_path, data_dir):
    assert "no text_embeds dataset" in _error([_image(data_dir, tmp_path)])


def test_text_embeds_dataset_needs_cache_dir(tmp_path, data_dir):
    text = _text()
    del text["cache_dir"]
    message = _error([_image(data_dir, tmp_path), text])
    assert "dataset 'text'" in message and "'cache_dir'" in message


def test_instanceprompt_requires_instance_prompt(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, caption_strategy="instanceprompt"), _text()])
    assert "dataset 'photos'" in message and "'instance_prompt'" in message


def test_text_embeds_reference_and_default_selection(tmp_path, data_dir):
    entries = [
        _image(data_dir, tmp_path),
        _image(data_dir, tmp_path, id="styled", cache_dir_vae=str(tmp_path / "v2"), text_embeds="text-b"),
        _text(),
        _text(id="text-b", default=False, cache_dir="cache/b"),
    ]
    config = parse_data_backend_config(entries, {})
    assert config.text_embeds_for("photos").id == "text"
    assert config.text_embeds_for("styled").id == "text-b"
    dangling = _image(data_dir, tmp_path, text_embeds="nope")
    message = _error([dangling, _text()])
    assert "dataset 'photos'" in message and "'text_embeds'" in message and "text" in message


def test_default_text_embeds_must_be_unambiguous(tmp_path, data_dir):
    assert "none has 'default'" in _error(
        [_image(data_dir, tmp_path), _text(default=False), _text(id="t2", default=False)]
    )
    assert "all marked 'default'" in _error([_image(data_dir, tmp_path), _text(), _text(id="t2")])


def test_shared_cache_dir_vae_is_rejected(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path), _image(data_dir, tmp_path, id="b"), _text()])
    assert "dataset 'b'" in message and "'cache_dir_vae'" in message


def test_key_table_is_consistent():
    names = [option.name for option in DATASET_KEYS]
    assert len(names) == len(set(names)) == len(KEYS_BY_NAME)
    assert all(option.help for option in DATASET_KEYS)


def test_secret_dataset_keys_are_never_echoed_in_errors(tmp_path) -> None:
    from simpletuner.data.schema import parse_data_backend_config
    from simpletuner.errors import ConfigError

    entries = [{"id": "x", "type": "local", "instance_data_dir": str(tmp_path), "cache_dir_vae": str(tmp_path / "c"),
                "aws_secret_access_key": "SECRETKEY123"},
               {"id": "t", "type": "local", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t")}]
    with pytest.raises(ConfigError) as caught:
        parse_data_backend_config(entries, {})
    assert "aws_secret_access_key" in str(caught.value)
    assert "SECRETKEY123" not in str(caught.value)


# --- keys added for the full data pipeline -------------------------------------------------------

def test_regularisation_flag_in_both_spellings(tmp_path, data_dir):
    for key in ("is_regularisation_data", "is_regularization_data"):
        config = parse_data_backend_config([_image(data_dir, tmp_path, **{key: "true"}), _text()], {})
        assert config.image_datasets[0].is_regularisation_data is True
    plain = parse_data_backend_config([_image(data_dir, tmp_path), _text()], {})
    assert plain.image_datasets[0].is_regularisation_data is False


def test_cross_key_rules(tmp_path, data_dir):
    message = _error([_image(data_dir, tmp_path, instance_prompt="sks", only_instance_prompt=True,
                             prepend_instance_prompt=True), _text()])
    assert "'only_instance_prompt' and 'prepend_instance_prompt'" in message
    message = _error([_image(data_dir, tmp_path, minimum_aspect_ratio=2, maximum_aspect_ratio=1), _text()])
    assert "'minimum_aspect_ratio' = 2.0 is above 'maximum_aspect_ratio'" in message


def test_new_keys_resolve(tmp_path, data_dir):
    config = parse_data_backend_config(
        [_image(data_dir, tmp_path, maximum_image_size="2048", target_downsample_size=1536, ignore_epochs=1,
                probability="0.5", preserve_data_backend_cache=True, hash_filenames=True,
                remove_common_llm_caption_prefixes="yes"),
         _text()],
        {"aspect_bucket_rounding": 2, "preserve_data_backend_cache": False},
    )
    dataset = config.image_datasets[0]
    assert (dataset.maximum_image_size, dataset.target_downsample_size) == (2048, 1536)
    assert dataset.ignore_epochs and dataset.probability == 0.5 and dataset.preserve_data_backend_cache
    assert dataset.remove_common_llm_caption_prefixes and dataset.aspect_bucket_rounding == 2
