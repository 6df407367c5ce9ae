"""The job's modules read top to bottom: config -> data -> search -> final fit -> export, no import back up.

An import cycle once made ``python -m jobs.tune`` load ``jobs.tune`` twice, so the error raised by one
copy was not the class the other caught (exit 1 and a traceback instead of 4).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

JOBS = REPO / "jobs"

# Lower layers never import higher ones; a module may import only from strictly lower layers.
LAYERS: dict[str, int] = {
    "jobs": 0,  # the empty package
    "jobs.errors": 0,
    "jobs.kt_compat": 1,
    "jobs.distributed.roles": 1,
    "jobs.distributed": 1,  # the package's __init__ (no imports)
    "jobs.config": 2,
    "jobs.augment": 2,  # keras only
    "jobs.data": 3,
    "jobs.runtime": 3,
    "jobs.progress": 3,
    "jobs.search_space": 3,
    "jobs.pushmetrics": 3,
    "jobs.report": 3,
    "jobs.export": 3,
    "jobs.tuners": 4,
    "jobs.search": 5,
    "jobs.final": 6,
    "jobs.distributed.worker": 6,
    "jobs.distributed.chief": 6,
    "jobs.pipeline": 7,
    "jobs.trial": 7,  # a Katib trial: the search's model and fit for one set of values
    "jobs.promote": 8,  # publishes a trial's model (uses jobs.trial's build)
    "jobs.cli": 8,
    "jobs.tune": 9,
    "jobs.__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, name: str) -> set[str]:
    """Every ``jobs.*`` module ``path`` imports, at the top, inside functions or under TYPE_CHECKING."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                base = base.rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # "from jobs import tuners"
    return {module for module in found if module in LAYERS}


def test_every_job_module_has_a_layer() -> None:
    modules = {_module_name(path) for path in JOBS.rglob("*.py")}
    assert modules == set(LAYERS), f"add new modules to LAYERS: {sorted(modules ^ set(LAYERS))}"


def test_no_module_imports_a_layer_above_or_beside_itself() -> None:
    upward = []
    for path in sorted(JOBS.rglob("*.py")):
        name = _module_name(path)
        for module in _imported(path, name):
            if module != name and LAYERS[module] >= LAYERS[name] and not name.startswith(f"{module}."):
                upward.append(f"{name} (layer {LAYERS[name]}) imports {module} (layer {LAYERS[module]})")
    assert upward == []


def test_nothing_but_the_entry_points_imports_the_entry_points() -> None:
    for path in sorted(JOBS.rglob("*.py")):
        name = _module_name(path)
        if name in ("jobs.tune", "jobs.__main__"):
            continue
        assert "jobs.tune" not in _imported(path, name), name
