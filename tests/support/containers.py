"""What the container suites share (``pytest -m e2e`` and ``pytest -m k8s``): podman's environment, commands
judged by their exit code, progress lines on the terminal, and the project images built once.

The images: the local base image (``scripts/make-base-images.sh``), then ``mnist-tune`` and ``mnist-serve``
from ``compose.yaml``'s own ``build:`` sections (``podman-compose build``; CPU TensorFlow, the host's CA
bundle mounted into the builds, layer cache kept). Both suites run exactly these images.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.support import REPO

CONTAINERS_CONF = REPO / "scripts" / "containers.conf"  # runc and explicit ulimits (docs/deployment.md)
BUILD_MOUNTS = "-v /etc/ssl/certs:/etc/ssl/certs:ro"  # a TLS-intercepting proxy: pip in the build needs it
PROJECT_SERVICES = ("tune", "serve")  # compose services whose images the Dockerfiles build

_capture_manager = None  # pytest's capture manager, so progress lines reach the terminal as they happen


def progress_to_terminal(config: pytest.Config) -> None:
    """Call once per module (from a fixture) so :func:`say` can write past pytest's capture."""
    global _capture_manager  # noqa: PLW0603
    _capture_manager = config.pluginmanager.getplugin("capturemanager")


def say(message: str, tag: str = "e2e") -> None:
    """A progress line on the terminal even while pytest captures output (and in the captured log)."""
    line = f"{time.strftime('%H:%M:%S', time.gmtime())} [{tag}] {message}"
    print(line)
    if _capture_manager is not None:
        with _capture_manager.global_and_fixture_disabled():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def official_mnist(marker: str) -> Path:
    """MNIST_DATA_DIR, holding the official files the container suites mount; else a clear failure."""
    value = os.environ.get("MNIST_DATA_DIR")
    if not value:
        pytest.fail(
            f"pytest -m {marker} needs MNIST_DATA_DIR: the folder with the official MNIST files "
            "(t10k-images-idx3-ubyte.gz, ...); .ci/run sets it",
            pytrace=False,
        )
    path = Path(value).resolve()
    names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        pytest.fail(f"MNIST_DATA_DIR={value}: missing {missing}", pytrace=False)
    return path


def podman_env(**extra: str) -> dict[str, str]:
    """The host's environment with the project's containers.conf (unless the caller set another)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNE_", "DIGITS_", "E2E_"))}
    env.pop("TF_PACKAGE", None)  # the compose file's default (CPU TensorFlow)
    env["CONTAINERS_CONF"] = os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))
    env.update(extra)
    return env


def run(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command; with ``check`` a non-zero exit fails the test with the command's own output."""
    # No stdin: `podman-compose run` allocates a TTY and would put a terminal on stdin into raw mode.
    result = subprocess.run(
        args,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{shlex.join(args)} exited {result.returncode}\n--- stdout (tail)\n{result.stdout[-4000:]}"
            f"\n--- stderr (tail)\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result


def qualified_local(image: str) -> str:
    """What podman tags a built short name as: ``mnist-serve:latest`` -> ``localhost/mnist-serve:latest``."""
    return image if "/" in image else f"localhost/{image}"


def project_images() -> dict[str, str]:
    """compose service -> the image podman tags its build as (``tune`` -> ``localhost/mnist-tune:latest``)."""
    spec = yaml.safe_load((REPO / "compose.yaml").read_text())
    return {service: qualified_local(spec["services"][service]["image"]) for service in PROJECT_SERVICES}


def make_base_image(env: dict[str, str]) -> None:
    """The local stand-in for the Dockerfiles' base image (idempotent: nothing to do once it exists)."""
    run([str(REPO / "scripts" / "make-base-images.sh")], env=env, timeout=900)


def build_project_images(env: dict[str, str], tag: str = "e2e") -> dict[str, str]:
    """``podman-compose build`` of compose.yaml's build sections; returns service -> image name.

    Checks what both suites rely on: both images run as 10001:10001, and the serving image has no
    keras-tuner, matplotlib or compiler. The images a rebuild replaced (2 GB each) are removed.
    """
    images = project_images()
    compose = str(Path(sys.executable).parent / "podman-compose")
    if not Path(compose).exists():
        pytest.fail(f"no {compose}: run scripts/setup.sh e2e", pytrace=False)

    def image_id(image: str, check: bool) -> str:
        inspected = run(["podman", "image", "inspect", "-f", "{{.Id}}", image], env=env, check=check)
        return inspected.stdout.strip()

    previous = {image_id(image, check=False) for image in images.values()} - {""}
    run(
        [compose, "-f", str(REPO / "compose.yaml"), f"--podman-build-args={BUILD_MOUNTS}", "build"]
        + list(PROJECT_SERVICES),
        env=env,
        timeout=3000,
    )
    current = {image_id(image, check=True) for image in images.values()}
    for old in previous - current:  # untagged now; the layer cache stays
        run(["podman", "rmi", old], env=env, check=False)
    for image in images.values():
        user = run(["podman", "image", "inspect", "-f", "{{.Config.User}}", image], env=env).stdout
        assert user.strip() == "10001:10001", f"{image} runs as {user.strip()!r}"
        size = int(run(["podman", "image", "inspect", "-f", "{{.Size}}", image], env=env).stdout)
        say(f"image {image}: {size // 1_000_000} MB", tag)
    run(
        [
            "podman",
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "python",
            images["serve"],
            "-c",
            "import importlib.util, shutil, sys\n"
            "found = [m for m in ('keras_tuner', 'matplotlib') if importlib.util.find_spec(m)]\n"
            "found += [c for c in ('gcc', 'cc', 'g++', 'c++', 'clang') if shutil.which(c)]\n"
            "sys.exit(f'serve image contains {found}' if found else 0)",
        ],
        env=env,
    )
    return images


def timestamp(container: dict, field: str) -> float:
    """``StartedAt`` / ``FinishedAt`` of ``podman inspect`` in seconds since the epoch."""
    text = container["State"][field]  # e.g. 2026-12-03T10:01:02.123456789Z or ...+00:00
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    assert match, f"unexpected {field} {text!r}"
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    seconds = datetime.fromisoformat(match.group(1) + zone).timestamp()
    return seconds + float(f"0.{match.group(2) or 0}")
