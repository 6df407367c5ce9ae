"""System tools the deployment tests rest on (installed by scripts/setup.sh)."""

import shutil

import pytest


def require_tools(*names: str) -> None:
    """Fail, never skip, when a tool is missing: a skipped check would hide a broken setup."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.fail(f"missing system tools {missing}: run scripts/setup.sh dev (as root)", pytrace=False)
