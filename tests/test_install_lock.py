"""The lock (constraints.txt) pins every dependency, within pyproject's ranges, and README uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [Requirement(text) for text in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        declared += [Requirement(text) for text in extra]
    return declared


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in constraints.txt; run .ci/update-lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}"
        )


def test_torch_is_pinned_without_a_build_label() -> None:
    """``torch==2.13.0`` also matches CUDA builds; ``+cpu`` would fight a GPU user's torch."""
    text = (REPO / "constraints.txt").read_text(encoding="utf-8")
    assert re.search(r"^torch==[0-9.]+$", text, re.MULTILINE)


def test_both_readme_install_commands_use_the_lock() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- demo-command -->", "<!-- test-command -->"):
        block = readme.split(marker, 1)[1].split("```", 2)[1]
        assert "-c constraints.txt" in block, f"the command after {marker} installs without the lock"
