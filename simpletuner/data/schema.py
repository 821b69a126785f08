"""The multidatabackend.json schema: every dataset key declared once, checked up front.

A data backend config is a JSON list of dataset objects.  Each key a dataset
object may carry is one :class:`~simpletuner.config.option.Option` in
:data:`DATASET_KEYS`, the same record the main option table uses, so type
coercion (``"true"``, ``"1024"``), choices, bounds, aliases (``centre``) and
"not implemented yet" work exactly like they do for command-line options.
Documentation can be generated from the table.

Values a dataset does not set fall back to the global options handed to
:func:`load_data_backend_config` (``resolution``, ``crop``...), then to the
defaults declared here, mirroring SimpleTuner.

Everything wrong with the file is found here, before any image is opened:
bad JSON, unknown keys, wrong types, missing directories, dangling
``text_embeds`` references.  Messages are one line naming the dataset id and
the key, and say what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from simpletuner.config.coerce import coerce_value, unknown_key_message
from simpletuner.config.option import Option
from simpletuner.errors import ConfigError, DataError

GROUP_IDENTITY = "identity"
GROUP_WHERE = "location"
GROUP_SIZE = "size and shape"
GROUP_CROP = "cropping"
GROUP_CAPTIONS = "captions"
GROUP_SAMPLING = "sampling"
GROUP_DISCOVERY = "discovery and caches"

_NOT_YET = "Not implemented yet."


def _key(name: str, kind: str, default: Any, help: str, group: str, **extra: Any) -> Option:
    return Option(name=name, kind=kind, default=default, help=help, group=group, **extra)


def _later(name: str, kind: str, default: Any, help: str, group: str, **extra: Any) -> Option:
    """A SimpleTuner key we recognise but cannot honour yet: only its default passes."""
    return _key(name, kind, default, f"{help} {_NOT_YET}", group, implemented=False, **extra)


DATASET_KEYS: Tuple[Option, ...] = (
    # --- identity and kind -------------------------------------------------
    _key("id", "str", None, "Unique name of the dataset; used in logs, reports and cache keys.",
         GROUP_IDENTITY),
    _key("type", "str", "local", "Where the files live: `local` folder, `aws` (S3) bucket or `csv` URL list.",
         GROUP_IDENTITY, choices=("local", "aws", "csv"), implemented=("local",)),
    _key("dataset_type", "str", "image",
         "`image` for training images, `text_embeds` for a text-embedding cache, "
         "`image_embeds` for an image-embedding cache.",
         GROUP_IDENTITY, choices=("image", "text_embeds", "image_embeds"),
         implemented=("image", "text_embeds")),
    _key("default", "bool", False,
         "On a text_embeds dataset: image datasets without `text_embeds` use this one.", GROUP_IDENTITY),
    _key("disabled", "bool", False, "Leave the dataset out of the run without deleting its entry.",
         GROUP_IDENTITY),
    _key("text_embeds", "str", None,
         "Id of the text_embeds dataset whose cache this image dataset uses; default: the default one.",
         GROUP_IDENTITY),
    _later("image_embeds", "str", None, "Id of the image_embeds dataset this image dataset uses.",
           GROUP_IDENTITY),
    # --- where ---------------------------------------------------------------
    _key("instance_data_dir", "path", None,
         "Folder holding the images (searched recursively); relative paths start at the working directory.",
         GROUP_WHERE),
    _key("cache_dir_vae", "path", None,
         "Folder for this dataset's latent cache and discovery metadata; one per dataset.", GROUP_WHERE),
    _key("cache_dir", "path", None, "On a text_embeds dataset: folder for the text-embedding cache.",
         GROUP_WHERE),
    _later("aws_bucket_name", "str", None, "S3 bucket holding the images.", GROUP_WHERE),
    _later("aws_region_name", "str", None, "S3 region.", GROUP_WHERE),
    _later("aws_endpoint_url", "str", None, "S3-compatible endpoint URL.", GROUP_WHERE),
    _later("aws_access_key_id", "str", None, "S3 access key id.", GROUP_WHERE, secret=True),
    _later("aws_secret_access_key", "str", None, "S3 secret key.", GROUP_WHERE, secret=True),
    _later("aws_data_prefix", "str", None, "Key prefix of the images inside the bucket.", GROUP_WHERE),
    _later("csv_file", "path", None, "CSV file listing image URLs.", GROUP_WHERE),
    _later("csv_caption_column", "str", None, "CSV column holding captions.", GROUP_WHERE),
    _later("csv_cache_dir", "path", None, "Where downloaded CSV images are kept.", GROUP_WHERE),
    # --- size and shape --------------------------------------------------------
    _key("resolution", "int", 1024,
         "Training size in pixels: the square edge for `pixel_area`, the shorter edge for `pixel`.",
         GROUP_SIZE, minimum=8),
    _key("resolution_type", "str", "pixel_area",
         "`pixel_area`: images keep their aspect at about resolution² pixels; `pixel`: the shorter "
         "edge becomes resolution; `area`: resolution in megapixels (deprecated).",
         GROUP_SIZE, choices=("pixel", "pixel_area", "area"), implemented=("pixel", "pixel_area")),
    _key("minimum_image_size", "int", None,
         "Skip smaller images: shorter edge for `pixel`, sqrt(width·height) for `pixel_area`.",
         GROUP_SIZE, minimum=0),
    _later("maximum_image_size", "int", None, "Downsample images larger than this first.", GROUP_SIZE),
    _later("target_downsample_size", "int", None, "Size large images are downsampled to.", GROUP_SIZE),
    _later("minimum_aspect_ratio", "float", None, "Skip images narrower than this aspect.", GROUP_SIZE),
    _later("maximum_aspect_ratio", "float", None, "Skip images wider than this aspect.", GROUP_SIZE),
    _key("aspect_bucket_alignment", "int", 64,
         "Bucket edges are multiples of this many pixels (64 suits most VAEs and patch sizes).",
         GROUP_SIZE, minimum=1),
    # --- cropping --------------------------------------------------------------
    _key("crop", "bool", False,
         "Crop images to the bucket instead of resizing them to cover it and trimming the centre.",
         GROUP_CROP),
    _key("crop_style", "str", "random",
         "Where the crop window goes: `center` (or `centre`), `corner` (lowest-right), `random` "
         "(fixed per image and seed), `face`.",
         GROUP_CROP, choices=("center", "corner", "random", "face"),
         implemented=("center", "corner", "random"), aliases={"centre": "center"}),
    _key("crop_aspect", "str", "square",
         "Shape of the crop: `square`, `preserve` (the image's own aspect bucket), `closest`/`random` "
         "(from crop_aspect_buckets).",
         GROUP_CROP, choices=("square", "preserve", "closest", "random"),
         implemented=("square", "preserve")),
    _later("crop_aspect_buckets", "list", None, "Aspect ratios crop_aspect closest/random choose from.",
           GROUP_CROP),
    # --- captions ----------------------------------------------------------------
    _key("caption_strategy", "str", "filename",
         "Where captions come from: `textfile` (image.txt beside the image), `filename` (cleaned-up "
         "file name), `instanceprompt` (instance_prompt for every image), `parquet`.",
         GROUP_CAPTIONS, choices=("textfile", "filename", "parquet", "instanceprompt"),
         implemented=("textfile", "filename", "instanceprompt")),
    _key("instance_prompt", "str", None, "Caption used by caption_strategy=instanceprompt.",
         GROUP_CAPTIONS),
    _later("prepend_instance_prompt", "bool", False, "Put instance_prompt before every caption.",
           GROUP_CAPTIONS),
    _later("only_instance_prompt", "bool", False, "Use instance_prompt instead of every caption.",
           GROUP_CAPTIONS),
    _later("parquet", "str", None, "Block naming the parquet/JSONL file and its columns.",
           GROUP_CAPTIONS),
    _later("caption_filter_list", "path", None,
           "File of strings, regexes and s/x/y/ replacements applied to captions.", GROUP_CAPTIONS),
    # --- sampling -------------------------------------------------------------------
    _key("repeats", "int", 0,
         "Extra passes per epoch: each image is seen 1 + repeats times an epoch.", GROUP_SAMPLING,
         minimum=0),
    _key("probability", "float", 1.0,
         "Relative weight of this dataset when datasets are mixed.", GROUP_SAMPLING, minimum=0.0),
    _later("is_regularisation_data", "bool", False, "Mark the dataset as regularisation images.",
           GROUP_SAMPLING),
    _later("ignore_epochs", "bool", False, "Do not let this dataset end an epoch.", GROUP_SAMPLING),
    # --- discovery and caches -----------------------------------------------------
    _later("skip_file_discovery", "str", None, "Skip discovery steps: vae, aspect, text, metadata.",
           GROUP_DISCOVERY),
    _later("preserve_data_backend_cache", "bool", False, "Never rebuild the dataset's metadata.",
           GROUP_DISCOVERY),
    _later("hash_filenames", "bool", False, "Name cache files by a hash of the image path.",
           GROUP_DISCOVERY),
    _later("metadata_backend", "str", "discovery", "Read image sizes by discovery or from parquet.",
           GROUP_DISCOVERY, choices=("discovery", "parquet")),
    _later("scan_for_errors", "bool", False, "Check every cache entry against its image at start.",
           GROUP_DISCOVERY),
    _later("vae_cache_clear_each_epoch", "bool", False, "Delete and rebuild latents every epoch.",
           GROUP_DISCOVERY),
    _later("cache_file_suffix", "str", None, "Suffix added to cache file names.", GROUP_DISCOVERY),
    _key("write_batch_size", "int", 128,
         "Accepted for SimpleTuner compatibility; cache writes are batched automatically, so it has "
         "no effect.", GROUP_DISCOVERY, minimum=1),
)

KEYS_BY_NAME: Dict[str, Option] = {option.name: option for option in DATASET_KEYS}

# Global options whose values are the defaults of same-named dataset keys.
GLOBAL_DEFAULT_KEYS: Tuple[str, ...] = (
    "resolution",
    "resolution_type",
    "crop",
    "crop_style",
    "crop_aspect",
    "caption_strategy",
    "minimum_image_size",
    "aspect_bucket_alignment",
)


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


@dataclass(frozen=True)
class TextEmbedConfig:
    """One enabled text-embedding cache dataset."""

    id: str
    cache_dir: str
    default: bool
    type: str = "local"


@dataclass(frozen=True)
class DataBackendConfig:
    """The parsed multidatabackend.json: enabled datasets, in file order."""

    path: str
    image_datasets: Tuple[DatasetConfig, ...]
    text_embed_datasets: Tuple[TextEmbedConfig, ...]
    disabled_ids: Tuple[str, ...] = ()

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
    name = os.path.basename(path)
    if not isinstance(entries, list):
        raise ConfigError(
            f"{name}: must be a JSON list of dataset objects ([{{...}}, ...]), got a "
            f"{type(entries).__name__}"
        )
    resolved = _global_defaults(defaults)
    raw: List[Dict[str, Any]] = []
    seen: Dict[str, int] = {}
    for index, entry in enumerate(entries):
        values = _validate_entry(entry, index, name)
        if values["id"] in seen:
            raise ConfigError(
                f"dataset {values['id']!r}: key 'id' is used by entries {seen[values['id']] + 1} and "
                f"{index + 1} of {name}; give each dataset a unique id"
            )
        seen[values["id"]] = index
        raw.append(values)
    return _build(path, raw, resolved)


def _read_json_list(path: str) -> list:
    if not os.path.isfile(path):
        raise ConfigError(
            f"data backend config {path!r} does not exist; pass --data_backend_config pointing at "
            "your multidatabackend.json"
        )
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data backend config {path!r} cannot be read: {exc}") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg}); fix the syntax there"
        ) from None
    return entries


def _global_defaults(defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """Dataset defaults: declared defaults overridden by the global options given."""
    resolved = {option.name: option.default for option in DATASET_KEYS}
    for name in GLOBAL_DEFAULT_KEYS:
        value = defaults.get(name)
        if value is None:
            continue
        option = KEYS_BY_NAME[name]
        converted = _coerce(option, value, "global options")
        if not option.is_value_implemented(converted):
            raise ConfigError(
                f"global options: --{name} = {value!r} is not implemented yet for datasets; "
                + _implemented_hint(option)
            )
        resolved[name] = converted
    return resolved


def _coerce(option: Option, value: Any, where: str) -> Any:
    """coerce_value, with the message naming the dataset key rather than a --flag."""
    try:
        return coerce_value(option, value, where)
    except ConfigError as exc:
        message = str(exc).replace(f"{where}: {option.flag}", f"{where}: key {option.name!r}", 1)
        raise ConfigError(message) from None


def _validate_entry(entry: Any, index: int, file_name: str) -> Dict[str, Any]:
    """Check one dataset object's keys and types; return the values it sets, coerced."""
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{file_name}: entry {index + 1} must be a JSON object with an 'id', got "
            f"{type(entry).__name__}"
        )
    raw_id = entry.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        raise ConfigError(f"{file_name}: entry {index + 1} has no 'id'; give every dataset a unique id")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise ConfigError(f"{file_name}: entry {index + 1}: 'id' must be text, got {raw_id!r}")
    where = f"dataset {str(raw_id)!r}"
    values: Dict[str, Any] = {}
    for key, value in entry.items():
        option = KEYS_BY_NAME.get(key)
        if option is None:
            message = unknown_key_message(key, KEYS_BY_NAME, where, prefix="")
            raise ConfigError(message.replace(": unknown option ", ": unknown key ", 1))
        if key == "parquet" and isinstance(value, dict):
            value = json.dumps(value)  # a block; only its presence matters until parquet lands
        converted = _coerce(option, value, where)
        if converted is not None and not option.is_value_implemented(converted):
            shown = "a hidden value" if option.secret else repr(value)
            raise ConfigError(
                f"{where}: key {key!r} = {shown} is not implemented yet; " + _implemented_hint(option)
            )
        values[key] = converted
    values["id"] = str(raw_id)
    return values


def _implemented_hint(option: Option) -> str:
    if isinstance(option.implemented, tuple):
        return "use one of: " + ", ".join(option.implemented)
    if option.default is None:
        return "remove the key"
    return f"remove the key or set it to {json.dumps(option.default)}"


def _build(path: str, raw: List[Dict[str, Any]], defaults: Dict[str, Any]) -> DataBackendConfig:
    name = os.path.basename(path)
    disabled = tuple(v["id"] for v in raw if v.get("disabled"))
    enabled = [v for v in raw if not v.get("disabled")]
    text_raw = [v for v in enabled if v.get("dataset_type", "image") == "text_embeds"]
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
    text_ids = {t.id for t in text_sets}
    image_sets = tuple(_image_config(v, defaults, text_ids) for v in image_raw)
    _check_unique_cache_dirs(image_sets)
    return DataBackendConfig(
        path=os.path.abspath(path),
        image_datasets=image_sets,
        text_embed_datasets=text_sets,
        disabled_ids=disabled,
    )


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
    if not values.get("cache_dir"):
        raise ConfigError(
            f"{where}: key 'cache_dir' is required for dataset_type text_embeds; set it to a folder "
            "for the text-embedding cache"
        )
    return TextEmbedConfig(
        id=values["id"],
        cache_dir=os.path.abspath(os.path.expanduser(values["cache_dir"])),
        default=bool(values.get("default", False)),
        type=values.get("type", "local"),
    )


def _image_config(values: Dict[str, Any], defaults: Dict[str, Any], text_ids: set) -> DatasetConfig:
    where = f"dataset {values['id']!r}"
    merged = dict(defaults)
    merged.update({k: v for k, v in values.items() if v is not None})
    for key in ("instance_data_dir", "cache_dir_vae"):
        if not merged.get(key):
            raise ConfigError(f"{where}: key {key!r} is required for an image dataset; set it to a folder")
    data_dir = os.path.abspath(os.path.expanduser(merged["instance_data_dir"]))
    if not os.path.isdir(data_dir):
        raise DataError(
            f"{where}: key 'instance_data_dir' = {merged['instance_data_dir']!r} is not a folder "
            f"(resolved to {data_dir}); fix the path (relative paths start at {os.getcwd()})"
        )
    if merged["caption_strategy"] == "instanceprompt" and not merged.get("instance_prompt"):
        raise ConfigError(
            f"{where}: key 'instance_prompt' is required with caption_strategy 'instanceprompt'; "
            "set it to the caption every image should get"
        )
    if merged.get("text_embeds") is not None and merged["text_embeds"] not in text_ids:
        raise ConfigError(
            f"{where}: key 'text_embeds' = {merged['text_embeds']!r} names no enabled text_embeds "
            f"dataset; use one of: {', '.join(sorted(text_ids))}"
        )
    return DatasetConfig(
        id=values["id"],
        instance_data_dir=data_dir,
        cache_dir_vae=os.path.abspath(os.path.expanduser(merged["cache_dir_vae"])),
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
    )


def _check_unique_cache_dirs(image_sets: Tuple[DatasetConfig, ...]) -> None:
    """Two datasets sharing cache_dir_vae would overwrite each other's metadata and latents."""
    owners: Dict[str, str] = {}
    for dataset in image_sets:
        other = owners.get(dataset.cache_dir_vae)
        if other is not None:
            raise ConfigError(
                f"dataset {dataset.id!r}: key 'cache_dir_vae' is also used by dataset {other!r}; "
                "give each dataset its own cache_dir_vae"
            )
        owners[dataset.cache_dir_vae] = dataset.id
