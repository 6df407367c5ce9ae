"""What the played-manifest suites (``pytest -m k8s``: test_k8s_play.py, test_k8s_play_engines.py) share:
podman's environment and the project's images, built (or found in podman's cache) once per session."""

from __future__ import annotations

import time

import pytest

from tests.support.containers import (
    build_project_images,
    make_base_image,
    podman_env,
    progress_to_terminal,
    say,
)
from tests.support.tools import require_tools


@pytest.fixture(scope="session")
def k8s_env() -> dict[str, str]:
    require_tools("podman", "kubectl", "debootstrap")
    return podman_env()


@pytest.fixture(scope="session")
def k8s_images(k8s_env: dict[str, str], pytestconfig: pytest.Config) -> dict[str, str]:
    """The kustomize image name -> the local build (``mnist-tune``, ``mnist-serve``)."""
    progress_to_terminal(pytestconfig)  # session fixtures run before the modules' own (which do the same)
    started = time.monotonic()
    make_base_image(k8s_env)
    built = build_project_images(k8s_env, tag="k8s")
    say(f"base image and project images ready in {time.monotonic() - started:.0f} s", "k8s")
    return {"mnist-tune": built["tune"], "mnist-serve": built["serve"]}
