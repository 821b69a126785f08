"""The multidatabackend.json schema: every dataset key declared once, checked up front.

A data backend config is a JSON list of dataset objects.  Each key a dataset
object may carry is one :class:`~simpletuner.config.option.Option` in
:data:`DATASET_KEYS` (declared in :mod:`simpletuner.data.keys`), the same
record the main option table uses, so type coercion (``"true"``, ``"1024"``),
choices, bounds, aliases (``centre``) and "not implemented yet" work exactly
like they do for command-line options.  Documentation is generated from the
table.

Values a dataset does not set fall back to the global options handed to
:func:`load_data_backend_config` (``resolution``, ``crop``...), then to the
declared defaults, mirroring SimpleTuner.

Everything wrong with the file is found here, before any image is opened:
bad JSON, unknown keys, wrong types, missing directories, dangling
``text_embeds`` and ``image_embeds`` references, rules across keys
(:mod:`simpletuner.data.dataset_checks`), unreadable caption filter lists
and parquet tables that are not there.  Messages are one line naming the
dataset id and the key, and say what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from simpletuner.config.coerce import unknown_key_message
from simpletuner.data.aspect_map import AspectMap, parse_aspect_map
from simpletuner.data.caption_filters import CaptionFilter, load_filter_list
from simpletuner.data.csv_source import CsvSource, csv_source
from simpletuner.data.dataset_checks import (
    aspect_buckets,
    check_captions,
    check_epoch_recrop,
    check_sizes,
    filter_source,
    parquet_spec,
)
from simpletuner.data.global_defaults import (  # noqa: F401 - DATASET_DEFAULT_OPTIONS is re-exported
    DATASET_DEFAULT_OPTIONS,
    coerce_key,
    expand_templates,
    global_defaults,
    implemented_hint,
    text_cache_default,
    with_global_columns,
)
from simpletuner.data.huggingface_source import HuggingFaceSource, check_huggingface_keys, huggingface_source
from simpletuner.data.image_embeds import ImageEmbedConfig, attach_image_embeds, image_embed_config
from simpletuner.data.keys import DATASET_KEYS, GLOBAL_DEFAULT_KEYS, KEYS_BY_NAME
from simpletuner.data.size_units import resolve_size_units
from simpletuner.data.tables import ParquetSpec
from simpletuner.errors import ConfigError, DataError, UserError
from simpletuner.json_errors import describe_json_error
from simpletuner.storage.s3 import S3Settings
from simpletuner.storage.settings import cache_location, embed_cache_location, image_location, s3_settings

__all__ = [
    "DATASET_KEYS", "GLOBAL_DEFAULT_KEYS", "KEYS_BY_NAME", "DataBackendConfig", "DatasetConfig",
    "TextEmbedConfig", "load_data_backend_config", "parse_data_backend_config",
]


@dataclass(frozen=True)
class DatasetConfig:
    """One enabled image dataset, fully resolved (globals applied, paths absolute)."""

    id: str
    instance_data_dir: str
    cache_dir_vae: str
    text_embeds: Optional[str]
    caption_strategy: str
    instance_prompt: Optional[str]
    resolution: int
    resolution_type: str
    minimum_image_size: Optional[int]
    crop: bool
    crop_style: str
    crop_aspect: str
    repeats: int
    probability: float
    aspect_bucket_alignment: int
    type: str = "local"
    maximum_image_size: Optional[int] = None
    target_downsample_size: Optional[int] = None
    minimum_aspect_ratio: Optional[float] = None
    maximum_aspect_ratio: Optional[float] = None
    aspect_bucket_rounding: Optional[int] = None
    crop_aspect_buckets: Tuple[float, ...] = ()
    aspect_resolution_map: AspectMap = ()  # sorted (aspect, (width, height)) pairs
    prepend_instance_prompt: bool = False
    only_instance_prompt: bool = False
    caption_filters: Tuple[CaptionFilter, ...] = ()  # this dataset's, then its text_embeds dataset's
    remove_common_llm_caption_prefixes: bool = False
    parquet: Optional[ParquetSpec] = None
    metadata_backend: str = "discovery"
    is_regularisation_data: bool = False
    ignore_epochs: bool = False
    preserve_data_backend_cache: bool = False
    skip_file_discovery: Tuple[str, ...] = ()  # of: vae, aspect, text, metadata
    scan_for_errors: bool = False
    s3: Optional[S3Settings] = None  # type aws: how to reach the bucket (instance_data_dir is then s3://...)
    csv: Optional[CsvSource] = None  # type csv: the URL list (instance_data_dir is its download folder)
    # type huggingface: the dataset and its columns (instance_data_dir is its folder or hub id)
    huggingface: Optional[HuggingFaceSource] = None
    vae_cache_clear_each_epoch: bool = False
    # resolution_type area: the size keys as written, in megapixels (the fields above hold pixels)
    megapixels: Tuple[Tuple[str, float], ...] = ()
    image_embeds: Optional[ImageEmbedConfig] = None  # where its latents go instead of cache_dir_vae


@dataclass(frozen=True)
class TextEmbedConfig:
    """One enabled text-embedding cache dataset."""

    id: str
    cache_dir: str
    default: bool
    type: str = "local"
    caption_filters: Tuple[CaptionFilter, ...] = ()
    s3: Optional[S3Settings] = None  # type aws: cache_dir is then an s3:// URL


@dataclass(frozen=True)
class DataBackendConfig:
    """The parsed multidatabackend.json: enabled datasets, in file order."""

    path: str
    image_datasets: Tuple[DatasetConfig, ...]
    text_embed_datasets: Tuple[TextEmbedConfig, ...]
    disabled_ids: Tuple[str, ...] = ()
    image_embed_datasets: Tuple[ImageEmbedConfig, ...] = ()

    @property
    def default_text_embeds(self) -> TextEmbedConfig:
        """The text_embeds dataset marked default (or the only one)."""
        for dataset in self.text_embed_datasets:
            if dataset.default:
                return dataset
        return self.text_embed_datasets[0]

    def text_embeds_for(self, dataset: DatasetConfig | str) -> TextEmbedConfig:
        """The text-embed cache an image dataset uses: its `text_embeds`, else the default."""
        image = self.dataset(dataset) if isinstance(dataset, str) else dataset
        if image.text_embeds is None:
            return self.default_text_embeds
        for candidate in self.text_embed_datasets:
            if candidate.id == image.text_embeds:
                return candidate
        raise ConfigError(  # unreachable after validation; kept for hand-built configs
            f"dataset {image.id!r}: text_embeds {image.text_embeds!r} names no text_embeds dataset"
        )

    def dataset(self, dataset_id: str) -> DatasetConfig:
        """The enabled image dataset with this id."""
        for dataset in self.image_datasets:
            if dataset.id == dataset_id:
                return dataset
        raise KeyError(dataset_id)


def load_data_backend_config(path: str, defaults: Mapping[str, Any]) -> DataBackendConfig:
    """Read and validate ``path`` (multidatabackend.json).

    ``defaults`` holds the global option values (see :data:`GLOBAL_DEFAULT_KEYS`)
    that a dataset inherits when it does not set the key itself.
    """
    return parse_data_backend_config(_read_json_list(path), defaults, path)


def parse_data_backend_config(
    entries: Any, defaults: Mapping[str, Any], path: str = "multidatabackend.json"
) -> DataBackendConfig:
    """Validate an already-loaded list of dataset objects (the wizard and tests use this)."""
    raw, problems = _checked_entries(entries, os.path.basename(path))
    if problems:
        raise ConfigError("\n".join(problems))
    return _build(path, raw, global_defaults(defaults))


def data_backend_entry_problems(path: str) -> List[str]:
    """Every unknown key and bad value in the file, one line each (empty when there are none).

    Checked together with config.json's keys and values, so one run reports
    the mistakes of both files; rules across datasets come later, in
    :func:`load_data_backend_config`.
    """
    try:
        entries = _read_json_list(path)
    except ConfigError as error:
        return [str(error)]
    return _checked_entries(entries, os.path.basename(path))[1]


def _checked_entries(entries: Any, name: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(the coerced values of each usable entry, one line per problem in any entry)."""
    if not isinstance(entries, list):
        return [], [
            f"{name}: must be a JSON list of dataset objects ([{{...}}, ...]), got a "
            f"{type(entries).__name__}"
        ]
    problems: List[str] = []
    raw: List[Dict[str, Any]] = []
    seen: Dict[str, int] = {}
    for index, entry in enumerate(entries):
        values = _validate_entry(entry, index, name, problems)
        if values is None:
            continue
        if values["id"] in seen:
            problems.append(
                f"dataset {values['id']!r}: key 'id' is used by entries {seen[values['id']] + 1} and "
                f"{index + 1} of {name}; give each dataset a unique id"
            )
            continue
        seen[values["id"]] = index
        raw.append(values)
    return raw, problems


def _read_json_list(path: str) -> list:
    if not os.path.isfile(path):
        # Name where a relative path was looked for: run from another folder (or with
        # CONFIG_PATH from there), 'config/multidatabackend.json' is not the project's.
        where = "" if os.path.isabs(path) else (
            f" (resolved to {os.path.abspath(path)}; relative paths start at {os.getcwd()})")
        raise ConfigError(
            f"data backend config {path!r} does not exist{where}; pass --data_backend_config pointing at "
            "your multidatabackend.json, or run from your project folder"
        )
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data backend config {path!r} cannot be read: {exc}") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} {describe_json_error(exc)} (invalid JSON); fix the syntax there") from None
    return entries


def _validate_entry(entry: Any, index: int, file_name: str, problems: List[str]) -> Optional[Dict[str, Any]]:
    """The values one dataset object sets, coerced; each bad key or value adds a line to ``problems``.

    None when the entry has no usable id (nothing else can be said about it).
    """
    if not isinstance(entry, dict):
        problems.append(
            f"{file_name}: entry {index + 1} must be a JSON object with an 'id', got {type(entry).__name__}"
        )
        return None
    raw_id = entry.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        problems.append(f"{file_name}: entry {index + 1} has no 'id'; give every dataset a unique id")
        return None
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        problems.append(f"{file_name}: entry {index + 1}: 'id' must be text, got {raw_id!r}")
        return None
    where = f"dataset {str(raw_id)!r}"
    values: Dict[str, Any] = {}
    for key, value in entry.items():
        option = KEYS_BY_NAME.get(key)
        if option is None:
            message = unknown_key_message(key, KEYS_BY_NAME, where, prefix="")
            problems.append(message.replace(": unknown option ", ": unknown key ", 1))
            continue
        if key in _BLOCK_KEYS and isinstance(value, (dict, list)):
            values[key] = value  # a block or inline list; checked with the whole dataset
            continue
        try:
            converted = coerce_key(option, value, where)
        except ConfigError as error:
            problems.append(str(error))
            continue
        if converted is not None and not option.is_value_implemented(converted):
            shown = "a hidden value" if option.secret else repr(value)
            problems.append(
                f"{where}: key {key!r} = {shown} is not implemented yet; " + implemented_hint(option)
            )
            continue
        values[key] = converted
    values["id"] = str(raw_id)
    if "is_regularization_data" in values:  # one flag, two spellings
        spelled = values.pop("is_regularization_data")
        values["is_regularisation_data"] = values.get("is_regularisation_data") or spelled
    return values


_BLOCK_KEYS = ("parquet", "caption_filter_list", "aspect_resolution_map", "caption_column")


def _build(path: str, raw: List[Dict[str, Any]], defaults: Dict[str, Any]) -> DataBackendConfig:
    name = os.path.basename(path)
    disabled = tuple(v["id"] for v in raw if v.get("disabled"))
    enabled = [v for v in raw if not v.get("disabled")]
    enabled = [expand_templates(v, defaults.get("model_family")) for v in enabled]
    text_raw = [text_cache_default(v, defaults) for v in enabled if v.get("dataset_type", "image") == "text_embeds"]
    image_raw = [v for v in enabled if v.get("dataset_type", "image") == "image"]
    text_sets = tuple(_text_embed_config(v) for v in text_raw)
    if not image_raw:
        raise ConfigError(
            f"{name}: no enabled image dataset; add one with dataset_type 'image' (the default) "
            "and an instance_data_dir, or remove 'disabled' from one"
        )
    if not text_sets:
        raise ConfigError(
            f"{name}: no text_embeds dataset; add one like "
            '{"id": "text-embeds", "dataset_type": "text_embeds", "default": true, "cache_dir": "cache/text"}'
        )
    _check_default_text_embeds(name, text_sets)
    image_sets = _each_image_config(image_raw, defaults, text_sets)
    _check_unique_cache_dirs(image_sets)
    embed_sets = tuple(image_embed_config(v) for v in enabled if v.get("dataset_type") == "image_embeds")
    image_sets = attach_image_embeds(image_sets, image_raw, embed_sets, name)
    return DataBackendConfig(
        path=os.path.abspath(path),
        image_datasets=image_sets,
        text_embed_datasets=text_sets,
        disabled_ids=disabled,
        image_embed_datasets=embed_sets,
    )


def _each_image_config(
    image_raw: List[Dict[str, Any]], defaults: Dict[str, Any], text_sets: Tuple[TextEmbedConfig, ...]
) -> Tuple[DatasetConfig, ...]:
    """Every image dataset resolved; the first problem of each dataset is reported together."""
    image_sets: List[DatasetConfig] = []
    errors: List[UserError] = []
    for values in image_raw:
        try:
            image_sets.append(_image_config(values, defaults, text_sets))
        except UserError as error:
            errors.append(error)
    if errors:
        # One kind stays that kind (the wizard tolerates a DataError: a folder yet to be filled).
        kind = type(errors[0]) if all(type(e) is type(errors[0]) for e in errors) else ConfigError
        raise kind("\n".join(str(error) for error in errors))
    return tuple(image_sets)


def _check_default_text_embeds(file_name: str, text_sets: Tuple[TextEmbedConfig, ...]) -> None:
    defaults = [t.id for t in text_sets if t.default]
    if len(defaults) > 1:
        raise ConfigError(
            f"{file_name}: text_embeds datasets {defaults} are all marked 'default'; keep 'default': true "
            "on one of them"
        )
    if not defaults and len(text_sets) > 1:
        raise ConfigError(
            f"{file_name}: {len(text_sets)} text_embeds datasets but none has 'default': true; "
            "mark the one image datasets should use by default"
        )


def _text_embed_config(values: Dict[str, Any]) -> TextEmbedConfig:
    where = f"dataset {values['id']!r}"
    s3 = s3_settings(values, where)
    cache_dir = embed_cache_location(values, where, s3)
    filters = values.get("caption_filter_list")
    return TextEmbedConfig(
        id=values["id"],
        cache_dir=cache_dir,
        default=bool(values.get("default", False)),
        type=values.get("type", "local"),
        caption_filters=load_filter_list(filter_source(filters), where) if filters else (),
        s3=s3,
    )


def _image_config(
    values: Dict[str, Any], defaults: Dict[str, Any], text_sets: Tuple[TextEmbedConfig, ...]
) -> DatasetConfig:
    where = f"dataset {values['id']!r}"
    merged = dict(defaults)
    merged.update({k: v for k, v in values.items() if v is not None})
    merged = expand_templates(merged, defaults.get("model_family"))  # a global cache_dir_vae may hold {id}
    merged["parquet"] = with_global_columns(merged)
    s3 = s3_settings(merged, where)
    csv = csv_source(merged, where) if merged["type"] == "csv" else None
    hf = huggingface_source(merged, values, where) if merged["type"] == "huggingface" else None
    check_huggingface_keys(merged, values, where)
    elsewhere = s3 is not None or csv is not None or hf is not None  # images not in instance_data_dir
    for key in ("cache_dir_vae",) if elsewhere else ("instance_data_dir", "cache_dir_vae"):
        if not merged.get(key):
            raise ConfigError(f"{where}: key {key!r} is required for an image dataset; set it to a folder")
    if hf is not None:
        data_dir = hf.dataset_name
    elif csv is not None:
        data_dir = csv[1]  # the download folder; it need not exist yet
    else:
        data_dir = (image_location(merged, where) if s3
                    else os.path.abspath(os.path.expanduser(merged["instance_data_dir"])))
    if not elsewhere and not os.path.isdir(data_dir):
        raise DataError(
            f"{where}: key 'instance_data_dir' = {merged['instance_data_dir']!r} is not a folder "
            f"(resolved to {data_dir}); fix the path (relative paths start at {os.getcwd()})"
        )
    text_ids = {t.id: t for t in text_sets}
    if merged.get("text_embeds") is not None and merged["text_embeds"] not in text_ids:
        raise ConfigError(
            f"{where}: key 'text_embeds' = {merged['text_embeds']!r} names no enabled text_embeds "
            f"dataset; use one of: {', '.join(sorted(text_ids))}"
        )
    check_captions(merged, where)
    merged, megapixels = resolve_size_units(merged, where, [k for k in merged if values.get(k) is None])
    check_sizes(merged, where)
    check_epoch_recrop(merged, where)
    parquet = parquet_spec(merged, where, os.getcwd() if s3 else data_dir)  # a table is always a local file
    filters = load_filter_list(filter_source(merged["caption_filter_list"]), where) \
        if merged.get("caption_filter_list") else ()
    text_set = text_ids.get(merged.get("text_embeds")) if merged.get("text_embeds") else _default_text(text_sets)
    return DatasetConfig(
        id=values["id"],
        instance_data_dir=data_dir,
        cache_dir_vae=cache_location(merged["cache_dir_vae"], "cache_dir_vae", where, s3),
        text_embeds=merged.get("text_embeds"),
        caption_strategy=merged["caption_strategy"],
        instance_prompt=merged.get("instance_prompt"),
        resolution=merged["resolution"],
        resolution_type=merged["resolution_type"],
        minimum_image_size=merged.get("minimum_image_size"),
        crop=merged["crop"],
        crop_style=merged["crop_style"],
        crop_aspect=merged["crop_aspect"],
        repeats=merged["repeats"],
        probability=merged["probability"],
        aspect_bucket_alignment=merged["aspect_bucket_alignment"],
        type=merged["type"],
        maximum_image_size=merged.get("maximum_image_size"),
        target_downsample_size=merged.get("target_downsample_size"),
        minimum_aspect_ratio=merged.get("minimum_aspect_ratio"),
        maximum_aspect_ratio=merged.get("maximum_aspect_ratio"),
        aspect_bucket_rounding=merged.get("aspect_bucket_rounding"),
        crop_aspect_buckets=aspect_buckets(merged, where),
        aspect_resolution_map=parse_aspect_map(merged, where),
        prepend_instance_prompt=merged["prepend_instance_prompt"],
        only_instance_prompt=merged["only_instance_prompt"],
        caption_filters=tuple(filters) + (text_set.caption_filters if text_set else ()),
        remove_common_llm_caption_prefixes=merged["remove_common_llm_caption_prefixes"],
        parquet=parquet,
        metadata_backend=merged["metadata_backend"],
        is_regularisation_data=bool(merged.get("is_regularisation_data")),
        ignore_epochs=merged["ignore_epochs"],
        preserve_data_backend_cache=merged["preserve_data_backend_cache"],
        skip_file_discovery=tuple(merged.get("skip_file_discovery") or ()),
        scan_for_errors=merged["scan_for_errors"],
        s3=s3,
        csv=csv[0] if csv else None,
        huggingface=hf,
        vae_cache_clear_each_epoch=merged["vae_cache_clear_each_epoch"],
        megapixels=megapixels,
    )


def _default_text(text_sets: Tuple[TextEmbedConfig, ...]) -> Optional[TextEmbedConfig]:
    marked = [t for t in text_sets if t.default]
    return marked[0] if marked else (text_sets[0] if len(text_sets) == 1 else None)


def _check_unique_cache_dirs(image_sets: Tuple[DatasetConfig, ...]) -> None:
    """Two datasets sharing cache_dir_vae would overwrite each other's metadata and latents."""
    owners: Dict[str, str] = {}
    for dataset in image_sets:
        other = owners.get(dataset.cache_dir_vae)
        if other is not None:
            raise ConfigError(
                f"dataset {dataset.id!r}: key 'cache_dir_vae' is also used by dataset {other!r}; "
                "give each dataset its own cache_dir_vae (a shared --cache_dir_vae needs {id} in it, "
                "e.g. cache/vae/{id})"
            )
        owners[dataset.cache_dir_vae] = dataset.id
