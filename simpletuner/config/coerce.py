"""Turning raw values (CLI strings, JSON/TOML values) into typed option values.

SimpleTuner users write ``"true"``, ``"1e-4"`` or ``"20"`` as JSON strings, so
every kind accepts its string spelling as well as its native JSON type.  The
same functions check multidatabackend.json keys, which are declared with the
same :class:`~simpletuner.config.option.Option` record.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from simpletuner.config.option import Option
from simpletuner.errors import ConfigError

_TRUE = {"true", "yes", "1", "on", "y"}
_FALSE = {"false", "no", "0", "off", "n", "none", ""}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = float(text)  # "1e3" and "20.0" are fine, "2.5" is not
            if number.is_integer():
                return int(number)
    raise ValueError("expected a whole number")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError("expected a number")


def _as_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected text")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [_as_str(v).strip() for v in value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    raise ValueError("expected a comma-separated list")


_CONVERTERS = {
    "bool": _as_bool,
    "int": _as_int,
    "float": _as_float,
    "str": _as_str,
    "path": _as_str,
    "list": _as_list,
}

_KIND_WORDS = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "path": "a path",
    "list": "a comma-separated list",
}


def coerce_value(option: Option, value: Any, where: str) -> Any:
    """Return ``value`` converted to ``option``'s kind, or raise ConfigError.

    ``where`` names the source for the message (a file, "the command line",
    or a dataset), so the user knows which place to edit.
    """
    if value is None:
        return None
    if option.kind == "list" and option.choices and isinstance(value, str):
        # Choices hold no spaces, so "vae aspect" (SimpleTuner's spelling of
        # some lists) means the same as "vae,aspect".
        value = ",".join(value.split())
    try:
        converted = _CONVERTERS[option.kind](value)
    except (ValueError, TypeError):
        shown = "a hidden value" if option.secret else repr(value)  # never echo a secret
        raise ConfigError(
            f"{where}: {option.flag} must be {_KIND_WORDS[option.kind]}, got {shown}"
        ) from None
    converted = _canonical_choice(option, converted)
    _check_choices(option, converted, where)
    _check_bounds(option, converted, where)
    return converted


def _canonical_choice(option: Option, value: Any) -> Any:
    if not option.aliases:
        return value
    if isinstance(value, list):
        return [option.aliases.get(v, v) for v in value]
    return option.aliases.get(value, value)


def _check_choices(option: Option, value: Any, where: str) -> None:
    if not option.choices:
        return
    values = value if isinstance(value, list) else [value]
    for item in values:
        if item not in option.choices:
            raise ConfigError(
                f"{where}: {option.flag} got {item!r}; choose one of: "
                + ", ".join(str(c) for c in option.choices)
            )


def _check_bounds(option: Option, value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if option.minimum is not None and value < option.minimum:
        raise ConfigError(f"{where}: {option.flag} must be at least {option.minimum}, got {value}")
    if option.maximum is not None and value > option.maximum:
        raise ConfigError(f"{where}: {option.flag} must be at most {option.maximum}, got {value}")


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name most like ``name``, for "did you mean" hints."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(key: str, known: Iterable[str], where: str, prefix: str = "--") -> str:
    suggestion = closest_name(key, known)
    hint = f"; did you mean {prefix}{suggestion}?" if suggestion else ""
    return f"{where}: unknown option {prefix}{key}{hint}"
