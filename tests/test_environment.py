"""environment.yml lists the same dependencies as pyproject.toml, so conda users get what pip users get."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

# tomllib is in the standard library from Python 3.11; pyproject.toml allows 3.10.
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent


def package_name(requirement: str) -> str:
    """Return the normalized package name of a requirement such as ``PyYAML>=6.0``."""
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {package_name(item) for item in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        wanted |= {package_name(item) for item in extra}

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for item in environment["dependencies"]:
        if isinstance(item, dict):
            listed |= {package_name(entry) for entry in item["pip"] if not entry.startswith("-")}
        else:
            listed.add(package_name(item))
    listed -= {"python", "pip"}
    assert wanted - listed == set(), "add these to environment.yml"
    assert listed - wanted == set(), "add these to pyproject.toml or remove them from environment.yml"


def test_environment_pins_makefile_torch():
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^TORCH_PINS := (.+)$", makefile, re.MULTILINE).group(1).split()
    pip_section = next(item["pip"] for item in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
                       if isinstance(item, dict))
    for pin in pins:
        assert pin in pip_section
