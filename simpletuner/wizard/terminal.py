"""How a question reaches the user: arrow-key menus in a terminal, typed lines otherwise.

Both return the raw answer as text; checking it is the caller's job
(:mod:`simpletuner.wizard.questions`), so a menu and a pipe get the same
validation.  Ctrl-C raises KeyboardInterrupt and end of input EOFError in both.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Protocol, Sequence

InputFn = Callable[[str], str]


class Terminal(Protocol):
    intro: str  # how to answer, said once before the first question

    def ask(self, label: str, choices: Sequence[str] = (), default: str = "", multiple: bool = False) -> str:
        """The answer to one question (several choices comma-separated when ``multiple``)."""

    def say(self, text: str) -> None:
        """A line for the user (help, a problem with the last answer, a table)."""


class PlainTerminal:
    """Typed answers: ``label (choice, choice) [default]: `` then a line from ``input_fn``."""

    intro = "This writes a training config. Press Enter to keep the value in [brackets]."

    def __init__(self, input_fn: InputFn = input) -> None:
        self.input_fn = input_fn

    def ask(self, label: str, choices: Sequence[str] = (), default: str = "", multiple: bool = False) -> str:
        prompt = label
        if choices:
            prompt += " (" + ", ".join(choices) + ")"
        prompt += f" [{default}]: " if default else ": "
        return self.input_fn(prompt).strip()

    def say(self, text: str) -> None:
        print(text)


class MenuTerminal:
    """questionary's menus: arrows and Enter pick a choice, free text is typed with the default filled in."""

    intro = ("This writes a training config. Arrow keys choose, Enter accepts; a proposed value is "
             "filled in (edit it, or Ctrl-U to clear it). Ctrl-C stops without writing anything.")

    def ask(self, label: str, choices: Sequence[str] = (), default: str = "", multiple: bool = False) -> str:
        import questionary

        if choices and multiple:
            chosen = set(default.split(",")) if default else set()
            picked = questionary.checkbox(
                label, choices=[questionary.Choice(c, checked=c in chosen) for c in choices],
                instruction="(space toggles, Enter accepts)",
            ).unsafe_ask()
            return ",".join(picked)
        if choices:
            return questionary.select(label, choices=list(choices),
                                      default=default if default in choices else None).unsafe_ask()
        return questionary.text(label, default=default).unsafe_ask().strip()

    def say(self, text: str) -> None:
        print(text, flush=True)


def choose_terminal(input_fn: Optional[InputFn], plain: bool) -> Terminal:
    """Menus when a person sits at a real terminal; typed lines for pipes, scripts and ``--plain``."""
    if input_fn is None:
        if not plain and sys.stdin.isatty() and sys.stdout.isatty():
            return MenuTerminal()
        input_fn = input
    return PlainTerminal(input_fn)
