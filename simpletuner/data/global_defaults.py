"""What a dataset takes from the global options, and the templates in its paths.

SimpleTuner users set many dataset settings once, on the command line or in
config.json (``--instance_prompt``, ``--maximum_image_size``,
``--cache_dir_vae``, ``--parquet_caption_column`` ...), and a dataset's own key
overrides them.  :func:`global_defaults` turns the global option values into
the dataset defaults; the schema merges a dataset's keys over them.

Paths may hold ``{model_family}`` and ``{id}`` (the dataset's id), as the
current SimpleTuner release's example configs write them
(``"cache_dir_vae": "cache/vae/{model_family}/{id}"``), so one
multidatabackend.json serves several families and a global ``--cache_dir_vae``
gives each dataset its own folder.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from simpletuner.config.coerce import coerce_value
from simpletuner.config.option import Option
from simpletuner.data.keys import DATASET_KEYS, GLOBAL_DEFAULT_KEYS, KEYS_BY_NAME
from simpletuner.errors import ConfigError

# Global options that shape datasets but are no dataset key of their own.
GLOBAL_ONLY_KEYS: Tuple[str, ...] = (
    "aspect_bucket_rounding", "model_family", "cache_dir_text", "parquet_caption_column", "parquet_filename_column",
)
# Every global option load_data_backend_config reads from its ``defaults``.
DATASET_DEFAULT_OPTIONS: Tuple[str, ...] = GLOBAL_DEFAULT_KEYS + GLOBAL_ONLY_KEYS

# Global option -> the key of a dataset's parquet block it fills in.
_PARQUET_COLUMNS = {"parquet_caption_column": "caption_column", "parquet_filename_column": "filename_column"}
_TEMPLATE_KEYS = tuple(option.name for option in DATASET_KEYS if option.kind == "path")


def global_defaults(defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """Dataset defaults: declared defaults overridden by the global options given."""
    resolved = {option.name: option.default for option in DATASET_KEYS}
    for name in GLOBAL_DEFAULT_KEYS:
        value = defaults.get(name)
        if value is None or value == "":
            continue
        option = KEYS_BY_NAME[name]
        converted = coerce_key(option, value, "global options")
        if not option.is_value_implemented(converted):
            raise ConfigError(
                f"global options: --{name} = {value!r} is not implemented yet for datasets; "
                + implemented_hint(option)
            )
        resolved[name] = converted
    for name in GLOBAL_ONLY_KEYS:
        resolved[name] = defaults.get(name)
    return resolved


def coerce_key(option: Option, value: Any, where: str) -> Any:
    """coerce_value, with the message naming the dataset key rather than a --flag."""
    try:
        return coerce_value(option, value, where)
    except ConfigError as exc:
        message = str(exc).replace(f"{where}: {option.flag}", f"{where}: key {option.name!r}", 1)
        raise ConfigError(message) from None


def implemented_hint(option: Option) -> str:
    import json

    if isinstance(option.implemented, tuple):
        return "use one of: " + ", ".join(option.implemented)
    if option.default is None:
        return "remove the key"
    return f"remove the key or set it to {json.dumps(option.default)}"


def expand_templates(values: Dict[str, Any], model_family: Optional[str]) -> Dict[str, Any]:
    """``values`` with ``{model_family}`` and ``{id}`` replaced in its path keys.

    Other braces are left alone: a folder may really be called ``{old}``.
    """
    expanded = dict(values)
    where = f"dataset {values['id']!r}"
    for key in _TEMPLATE_KEYS:
        value = expanded.get(key)
        if not isinstance(value, str) or "{" not in value:
            continue
        if "{model_family}" in value:
            if not model_family:
                raise ConfigError(
                    f"{where}: key {key!r} = {value!r} uses {{model_family}} but no --model_family is set; "
                    "set --model_family or write the family's name in the path"
                )
            value = value.replace("{model_family}", model_family)
        expanded[key] = value.replace("{id}", str(values["id"]))
    return expanded


def with_global_columns(merged: Dict[str, Any]) -> Any:
    """The dataset's parquet block, with the global column names where it names none."""
    block = merged.get("parquet")
    if not isinstance(block, dict):
        return block
    filled = dict(block)
    for option, key in _PARQUET_COLUMNS.items():
        if merged.get(option) and not filled.get(key):
            filled[key] = merged[option]
    return filled


def text_cache_default(values: Dict[str, Any], defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """A text_embeds dataset's values, its cache in ``--cache_dir_text`` when it names none."""
    if values.get("cache_dir") or values.get("aws_data_prefix") or not defaults.get("cache_dir_text"):
        return values
    return {**values, "cache_dir": defaults["cache_dir_text"]}
