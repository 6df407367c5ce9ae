"""Each image installs what its code imports: every third-party import of a deployable is declared in the
``pyproject.toml`` extra its Dockerfile installs (``.[train]``, ``.[serve]``), not only in the dev venv.

Playing the Katib trial pod found the gap this guards: ``jobs`` imported pydantic-settings, which only the
``serve`` extra listed, so the train image could not start ``jobs.trial`` (nor, later, ``jobs.tune``).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.support import REPO

OWN = {"jobs", "serving", "modelrepo", "digits"}
# extra -> the packages its image runs (Dockerfile.train installs ".[train]", Dockerfile.serve ".[serve]")
IMAGES = {"train": ("jobs", "modelrepo"), "serve": ("serving", "modelrepo", "digits")}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in ``packages`` (functions too) -> the files."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OWN and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(root)))
    return found


def declared(pyproject: dict, extra: str) -> set[str]:
    project = pyproject["project"]
    requirements = project["dependencies"] + project["optional-dependencies"][extra]
    return {_normalise(re.split(r"[=<>!~\[; ]", requirement)[0]) for requirement in requirements}


def undeclared(root: Path, pyproject: dict, extra: str) -> list[str]:
    distributions = packages_distributions()
    allowed = declared(pyproject, extra)
    missing = []
    for module, files in sorted(third_party_imports(root, IMAGES[extra]).items()):
        provided_by = {_normalise(name) for name in distributions.get(module, [])}
        if not provided_by & allowed:
            missing.append(
                f"{module} ({', '.join(sorted(provided_by)) or 'not installed'}) in {sorted(files)}"
            )
    return missing


@pytest.mark.parametrize("extra", sorted(IMAGES))
def test_every_import_of_an_image_is_in_its_extra(extra: str) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert undeclared(REPO, pyproject, extra) == []


def test_the_check_finds_an_import_the_extra_lacks() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    train = pyproject["project"]["optional-dependencies"]["train"]
    pyproject["project"]["optional-dependencies"]["train"] = [
        requirement for requirement in train if not requirement.startswith("pydantic-settings")
    ]
    assert any(
        item.startswith("pydantic_settings (pydantic-settings)")
        for item in undeclared(REPO, pyproject, "train")
    )
