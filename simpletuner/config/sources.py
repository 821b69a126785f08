"""Where option values come from: defaults < config file < command line.

The config file is found the way SimpleTuner users expect:

* ``CONFIG_PATH`` names the file (with or without its ``.json``/``.toml``
  extension; a file that exists under the exact name given, such as
  ``config/config.json.example``, is read as it is);
* otherwise ``ENV=name`` selects ``config/name/config.<ext>``;
* otherwise ``config/config.<ext>``;

where ``<ext>`` follows ``CONFIG_BACKEND`` (``json``, the default, or
``toml``).  A file is parsed as TOML or JSON by its last ``.toml``/``.json``
suffix, else by ``CONFIG_BACKEND``.  If the user named a file
(``CONFIG_PATH``/``ENV``) it must exist; the default location may be absent,
and then the command line alone is used.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from simpletuner.config.coerce import coerce_value, unknown_key_message
from simpletuner.config.option import Option
from simpletuner.config.options import GROUPS, OPTIONS, OPTIONS_BY_NAME, SPELLING_TO_NAME
from simpletuner.errors import ConfigError
from simpletuner.json_errors import describe_json_error

BACKEND_EXTENSIONS = {"json": ".json", "toml": ".toml"}


def config_backend(env: Mapping[str, str]) -> str:
    """The config file format named by ``CONFIG_BACKEND`` (``json`` when unset)."""
    backend = env.get("CONFIG_BACKEND", "json").strip().lower() or "json"
    if backend not in BACKEND_EXTENSIONS:
        raise ConfigError(
            f"CONFIG_BACKEND={backend!r} is not supported; use one of: "
            + ", ".join(BACKEND_EXTENSIONS)
        )
    return backend


def locate_config_file(env: Mapping[str, str], cwd: Path) -> tuple[Optional[Path], bool]:
    """Return (path, required).  ``required`` is True when the user named it."""
    extension = BACKEND_EXTENSIONS[config_backend(env)]
    explicit = env.get("CONFIG_PATH", "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        path = cwd / path if not path.is_absolute() else path
        # "config/foo" means config/foo.json, but a file that exists under the
        # exact name given (config.json.example) is used as it is.
        if path.suffix not in BACKEND_EXTENSIONS.values() and not path.is_file():
            path = path.with_name(path.name + extension)
        return path, True
    env_name = env.get("ENV", "").strip()
    if env_name and env_name != "default":
        return cwd / "config" / env_name / f"config{extension}", True
    return cwd / "config" / f"config{extension}", False


def _file_format(path: Path, default: str) -> str:
    """json or toml: from the last .json/.toml suffix (config.toml.example), else ``default``."""
    for suffix in reversed(path.suffixes):
        for backend, extension in BACKEND_EXTENSIONS.items():
            if suffix == extension:
                return backend
    return default


def read_config_file(path: Path, default_format: str = "json") -> dict[str, Any]:
    """Parse a JSON or TOML config file into {option name: typed value}.

    The format follows the file's extension; ``default_format`` (the
    ``CONFIG_BACKEND``) decides for a name without .json/.toml in it.
    """
    problems: list[str] = []
    values = _normalise_keys(_read_file(path, default_format), str(path), problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def _read_file(path: Path, default_format: str) -> dict[str, Any]:
    """The file's top-level object, raw; ConfigError when it cannot be read or parsed."""
    file_format = _file_format(path, default_format)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; expected a {file_format.upper()} config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    if file_format == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({describe_json_error(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of option names to values at the top level")
    return data


def _normalise_keys(
    data: Mapping[str, Any], where: str, problems: list[str], spelled: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """{option name: typed value} of the good keys; one line per bad one added to ``problems``.

    A key may be another spelling of an option (``checkpoint_step_interval``);
    its value is stored under the option's name and ``spelled`` (when given)
    records option name -> the spelling used.
    """
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    written: dict[str, str] = {}  # key without dashes -> the key as written first
    for raw_key, value in data.items():
        key = str(raw_key).lstrip("-")
        name = SPELLING_TO_NAME.get(key, key)
        if name not in OPTIONS_BY_NAME:
            problems.append(unknown_key_message(key, _KNOWN_NAMES, where))
            continue
        try:
            converted = _coerce_spelled(OPTIONS_BY_NAME[name], key, value, where)
        except ConfigError as error:
            problems.append(str(error))
            continue
        if key in written and name in values and values[name] != converted:
            # "--lora_rank" and "lora_rank" in one file: which one wins is not the user's guess to make.
            shown = _shown(OPTIONS_BY_NAME[name], values[name]), _shown(OPTIONS_BY_NAME[name], converted)
            problems.append(f"{where}: keys {written[key]!r} and {str(raw_key)!r} are the same option but set to "
                            f"different values ({shown[0]} and {shown[1]}); keep one of them")
            continue
        written.setdefault(key, str(raw_key))
        _store(values, seen, name, key, converted, where, problems)
    if spelled is not None:
        spelled.update({name: key for name, key in seen.items() if key != name})
    return values


# Every name the loaders accept, for "did you mean" hints.
_KNOWN_NAMES: tuple[str, ...] = tuple(OPTIONS_BY_NAME) + tuple(SPELLING_TO_NAME)


def _coerce_spelled(option: Option, key: str, value: Any, where: str) -> Any:
    """coerce_value, with a message naming the spelling the user wrote."""
    try:
        return coerce_value(option, value, where)
    except ConfigError as error:
        if key == option.name:
            raise
        raise ConfigError(str(error).replace(option.flag, f"--{key}", 1)) from None


def _store(values: dict[str, Any], seen: dict[str, str], name: str, key: str, value: Any, where: str,
           problems: list[str]) -> None:
    """Put ``value`` under ``name``; two spellings of one option that disagree are a problem."""
    if name in seen and seen[name] != key and values[name] != value:
        problems.append(
            f"{where}: --{seen[name]} and --{key} are the same option (--{name}) but set to different "
            f"values ({_shown(OPTIONS_BY_NAME[name], values[name])} and {_shown(OPTIONS_BY_NAME[name], value)}); "
            "keep one of them"
        )
        return
    values[name] = value
    seen.setdefault(name, key)


def _shown(option: Option, value: Any) -> str:
    return "a hidden value" if option.secret else repr(value)


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The argparse parser, grouped as in OPTIONS.md.

    Every option defaults to SUPPRESS so that only flags the user typed show
    up in the namespace; precedence is applied by :func:`collect_values`.
    Values stay strings here and are converted by ``coerce_value`` so that a
    file and the command line give the same messages.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a diffusion model. Options may also be set in config/config.json.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    sections = {group: parser.add_argument_group(group) for group in GROUPS}
    for option in OPTIONS:
        sections[option.group].add_argument(option.flag, **_argparse_kwargs(option))
        for spelling in option.spellings:
            # Its own dest, so that two spellings that disagree can be told apart.
            sections[option.group].add_argument(
                f"--{spelling}", **{**_argparse_kwargs(option), "dest": spelling, "help": argparse.SUPPRESS}
            )
    return parser


def _argparse_kwargs(option: Option) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"help": _help_line(option), "dest": option.name}
    if option.kind == "bool":
        kwargs.update(nargs="?", const="true", metavar="true|false")
    elif option.choices:
        kwargs["metavar"] = "{" + ",".join(str(c) for c in option.choices) + "}"
    else:
        kwargs["metavar"] = option.kind.upper()
    return kwargs


def _help_line(option: Option) -> str:
    text = option.help.replace("%", "%%")
    if option.spellings:
        text += " (also: " + ", ".join(f"--{s}" for s in option.spellings) + ")"
    if option.default not in (None, False, "", [], ()):
        text += f" (default: {option.default})"
    if option.implemented is False:
        text += " [not implemented yet" + (f": {option.refusal}" if option.refusal else "") + "]"
    elif option.no_effect:
        text += f" [no effect here: {option.no_effect}]"
    elif isinstance(option.implemented, tuple):
        text += " [implemented: " + ", ".join(option.implemented) + "]"
    return text


def parse_cli(argv: Sequence[str]) -> dict[str, Any]:
    """Parse command-line flags into {option name: typed value}; all problems at once."""
    problems: list[str] = []
    values = _parse_cli(argv, problems, {})
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def _parse_cli(argv: Sequence[str], problems: list[str], spelled: dict[str, str]) -> dict[str, Any]:
    parser = build_parser()
    # argparse would print its 200-line usage and exit; a flag missing its value is one line like the rest.
    parser.exit_on_error = False
    try:
        namespace, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as error:
        hint = f"; give it one ({error.argument_name} VALUE)" if "expected one argument" in error.message else ""
        problems.append(f"command line: {error.argument_name}: {error.message}{hint}")
        return {}
    after_unknown_flag = False
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            problems.append(unknown_key_message(key, _KNOWN_NAMES, "command line"))
            after_unknown_flag = "=" not in token
        elif after_unknown_flag:
            after_unknown_flag = False  # the unknown option's value, already reported with it
        else:
            problems.append(f"command line: unexpected argument {token!r}; options start with --")
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, raw in vars(namespace).items():
        name = SPELLING_TO_NAME.get(key, key)
        try:
            converted = _coerce_spelled(OPTIONS_BY_NAME[name], key, raw, "command line")
        except ConfigError as error:
            problems.append(str(error))
            continue
        _store(values, seen, name, key, converted, "command line", problems)
    spelled.update({name: key for name, key in seen.items() if key != name})
    return values


def collect_values(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> tuple[dict[str, Any], set[str], Optional[Path]]:
    """Merge defaults, the config file and the command line.

    Returns (values for every option, names the user set, config file used);
    raises ConfigError listing every problem :func:`gather_values` found.
    """
    values, explicit, path, problems, _spelled = gather_values(argv, env, cwd)
    if problems:
        raise ConfigError("\n".join(problems))
    return values, explicit, path


def gather_values(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> tuple[dict[str, Any], set[str], Optional[Path], list[str], dict[str, str]]:
    """Like :func:`collect_values`, but returns the problems instead of raising.

    Every unknown key and bad value of the config file and of the command
    line is one line in the problems; the values they named stay at the
    value from the other source or the default.  The last item maps option
    name -> the other spelling the user wrote it as (the command line's
    spelling when both sources set it), so messages can use the user's words.
    """
    problems: list[str] = []
    cli_spelled: dict[str, str] = {}
    file_spelled: dict[str, str] = {}
    cli_values = _parse_cli(argv, problems, cli_spelled)
    file_values: dict[str, Any] = {}
    used_path: Optional[Path] = None
    try:
        path, required = locate_config_file(env, cwd)
        if path is not None and (required or path.exists()):
            used_path = path
            file_values = _normalise_keys(_read_file(path, config_backend(env)), str(path), problems, file_spelled)
    except ConfigError as error:
        problems.append(str(error))
    values = {option.name: option.default for option in OPTIONS}
    values.update(file_values)
    values.update(cli_values)
    spelled = {name: key for name, key in file_spelled.items() if name not in cli_values}
    spelled.update(cli_spelled)
    return values, set(file_values) | set(cli_values), used_path, problems, spelled
