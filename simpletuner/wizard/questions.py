"""One question at a time, asked again until the answer is one the trainer accepts.

Choices, defaults and help come from the option table
(:mod:`simpletuner.config.options`); an answer goes through the same
coercion as a config file's value, only implemented values are accepted, and
``check`` adds the trainer's cross-option or hardware refusal.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from simpletuner.config.coerce import coerce_value
from simpletuner.config.option import Option
from simpletuner.config.options import OPTIONS_BY_NAME
from simpletuner.errors import ConfigError
from simpletuner.wizard.terminal import Terminal

Check = Callable[[Any], Optional[str]]


def offered_choices(option: Option) -> list:
    """The choices the wizard offers: the option's choices that are implemented."""
    if not option.choices:
        return []
    return [choice for choice in option.choices if option.is_value_implemented(choice)]


def show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _matching_case(raw: str, choices: Sequence[Any]) -> str:
    """``Flux`` means ``flux``: choices are matched without regard to case (each part of a list)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    return ",".join(by_lower.get(part.strip().lower(), part.strip()) for part in raw.split(","))


def ask_option(
    term: Terminal,
    name: str,
    label: str,
    default: Any = None,
    check: Optional[Check] = None,
    option: Optional[Option] = None,
    choices: Optional[Sequence[Any]] = None,
    no_default: bool = False,
) -> Any:
    """Ask for one option's value until the answer is valid; returns it typed.

    ``default`` overrides the table's default (a proposal); ``no_default``
    asks with none, so an answer is required; ``choices`` narrows the
    offered ones (what the support matrix allows); ``check`` may return a
    message that refuses an otherwise valid value.
    """
    option = option or OPTIONS_BY_NAME[name]
    choices = list(choices) if choices is not None else offered_choices(option)
    if not no_default:
        if default is None:
            default = option.default
        if choices and default is not None and option.kind != "list" and default not in choices:
            default = choices[0]
        if default is None and choices:
            default = choices[0]
    shown_default = "" if no_default else show(default)
    term.say(f"\n{option.help}")
    while True:
        # A yes/no option is a two-entry menu; its answer is still checked as typed text.
        shown = [str(c) for c in choices] or (["true", "false"] if option.kind == "bool" else [])
        raw = term.ask(label, shown, shown_default, multiple=option.kind == "list").strip()
        if not raw:
            if not shown_default:
                term.say("  an answer is required")
                continue
            raw = shown_default
        if choices:
            raw = _matching_case(raw, choices)
        problem = _problem(option, raw, choices, check)
        if isinstance(problem, tuple):
            return problem[0]
        if choices:
            problem = f"{problem}; choose one of: " + ", ".join(str(c) for c in choices)
        term.say(f"  {problem}")


def _problem(option: Option, raw: str, choices: Sequence[Any], check: Optional[Check]) -> Any:
    """(value,) when ``raw`` is accepted, else the message saying why not."""
    try:
        value = coerce_value(option, raw, "answer")
    except ConfigError as error:
        # With choices, the list of offered ones (added by the caller) says it all.
        return f"{raw!r} is not offered" if choices else str(error).split(": ", 1)[-1]
    values = value if isinstance(value, list) else [value]
    if choices and any(v not in choices for v in values):
        return f"{raw!r} is not offered"
    if not option.is_value_implemented(value):
        return f"{show(value)} is not implemented yet"
    problem = check(value) if check is not None else None
    return problem or (value,)


def ask_text(term: Terminal, label: str, default: str = "", check: Optional[Check] = None) -> str:
    """Free text (a folder, a prompt); required unless there is a default."""
    while True:
        answer = term.ask(label, (), default).strip() or default
        if not answer:
            term.say("  an answer is required")
            continue
        problem = check(answer) if check is not None else None
        if problem is None:
            return answer
        term.say(f"  {problem}")


def ask_yes_no(term: Terminal, question: str, default: bool = False) -> bool:
    while True:
        answer = term.ask(question, ("yes", "no"), "yes" if default else "no").strip().lower()
        if not answer:
            return default
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        term.say("  please answer yes or no")
