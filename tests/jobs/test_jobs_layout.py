"""The import contracts in pyproject.toml ([tool.importlinter]) hold: the job's modules read top to bottom
(config -> data -> search -> final fit -> export, no import back up or sideways), jobs and serving never
import each other, modelrepo imports neither (nor TensorFlow). `.ci/run` runs the same check in its lint
step; this test makes the default suite fail too.

An import cycle once made ``python -m jobs.tune`` load ``jobs.tune`` twice, so the error raised by one
copy was not the class the other caught (exit 1 and a traceback instead of 4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages under ``root``, not an installed copy
    command = [str(LINT_IMPORTS), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=90, check=False)


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_or_an_unplaced_module_breaks_the_contracts(tmp_path: Path) -> None:
    # A copy of the packages with two violations: the contracts are not vacuous.
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("jobs", "serving", "modelrepo", "digits"):
        subprocess.run(["cp", "-r", str(REPO / name), str(copy / name)], check=True)
    (copy / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    with open(copy / "jobs" / "config.py", "a") as handle:
        handle.write("\nimport jobs.tuners  # noqa: E402, F401  (config sits below tuners)\n")
    (copy / "jobs" / "stray.py").write_text("")
    result = _lint_imports(copy)
    assert result.returncode == 1
    assert "jobs.config -> jobs.tuners" in result.stdout
    assert "- jobs.stray" in result.stdout  # exhaustive: every module needs a layer


def test_every_job_logger_is_named_after_its_module() -> None:
    # One rule: a log line's name says which module wrote it (``jobs.search``, ``jobs.distributed.chief``).
    # Entry points run as ``python -m jobs.trial`` use ``__spec__.name``: the same name, where ``__name__``
    # would be ``__main__``.
    import ast

    other = []
    for path in sorted((REPO / "jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger":
                if not (len(node.args) == 1 and ast.unparse(node.args[0]) in ("__name__", "__spec__.name")):
                    other.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert other == []
