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
from simpletuner.config.options import GROUPS, OPTIONS, OPTIONS_BY_NAME
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


def _normalise_keys(data: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """{option name: typed value} of the good keys; one line per bad one added to ``problems``."""
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).lstrip("-")
        if key not in OPTIONS_BY_NAME:
            problems.append(unknown_key_message(key, OPTIONS_BY_NAME, where))
            continue
        try:
            values[key] = coerce_value(OPTIONS_BY_NAME[key], value, where)
        except ConfigError as error:
            problems.append(str(error))
    return values


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
    if option.default not in (None, False, "", [], ()):
        text += f" (default: {option.default})"
    if option.implemented is False:
        text += " [not implemented yet]"
    elif isinstance(option.implemented, tuple):
        text += " [implemented: " + ", ".join(option.implemented) + "]"
    return text


def parse_cli(argv: Sequence[str]) -> dict[str, Any]:
    """Parse command-line flags into {option name: typed value}; all problems at once."""
    problems: list[str] = []
    values = _parse_cli(argv, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def _parse_cli(argv: Sequence[str], problems: list[str]) -> dict[str, Any]:
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(list(argv))
    after_unknown_flag = False
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            problems.append(unknown_key_message(key, OPTIONS_BY_NAME, "command line"))
            after_unknown_flag = "=" not in token
        elif after_unknown_flag:
            after_unknown_flag = False  # the unknown option's value, already reported with it
        else:
            problems.append(f"command line: unexpected argument {token!r}; options start with --")
    values: dict[str, Any] = {}
    for name, raw in vars(namespace).items():
        try:
            values[name] = coerce_value(OPTIONS_BY_NAME[name], raw, "command line")
        except ConfigError as error:
            problems.append(str(error))
    return values


def collect_values(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> tuple[dict[str, Any], set[str], Optional[Path]]:
    """Merge defaults, the config file and the command line.

    Returns (values for every option, names the user set, config file used);
    raises ConfigError listing every problem :func:`gather_values` found.
    """
    values, explicit, path, problems = gather_values(argv, env, cwd)
    if problems:
        raise ConfigError("\n".join(problems))
    return values, explicit, path


def gather_values(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path
) -> tuple[dict[str, Any], set[str], Optional[Path], list[str]]:
    """Like :func:`collect_values`, but returns the problems instead of raising.

    Every unknown key and bad value of the config file and of the command
    line is one line in the problems; the values they named stay at the
    value from the other source or the default.
    """
    problems: list[str] = []
    cli_values = _parse_cli(argv, problems)
    file_values: dict[str, Any] = {}
    used_path: Optional[Path] = None
    try:
        path, required = locate_config_file(env, cwd)
        if path is not None and (required or path.exists()):
            used_path = path
            file_values = _normalise_keys(_read_file(path, config_backend(env)), str(path), problems)
    except ConfigError as error:
        problems.append(str(error))
    values = {option.name: option.default for option in OPTIONS}
    values.update(file_values)
    values.update(cli_values)
    return values, set(file_values) | set(cli_values), used_path, problems
