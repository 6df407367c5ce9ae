"""Dockerfiles pass hadolint and follow the image conventions; the compose files validate."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from tests.support import REPO

DOCKERFILES = ("Dockerfile.serve", "Dockerfile.train")
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")

# Compose's variable syntax (the subset the files use): ${VAR}, ${VAR:-default}, ${VAR:?error}, $$.
_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Expand variables like Docker Compose does before it validates the file."""

    def expand(match: re.Match) -> str:
        escaped, name, default_op, default, error_op, error = match.groups()
        if escaped:
            return "$"
        value = env.get(name)
        empty = value is None or (value == "" and ":" in (default_op or error_op or ""))
        if error_op and empty:
            raise ValueError(f"required variable {name} is missing: {error}")
        if empty:
            return default or ""
        return value

    return _VARIABLE.sub(expand, text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile: str) -> None:
    result = subprocess.run(
        [HADOLINT, dockerfile], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install tensorflow\nCMD python -m serving.server\n")
    assert subprocess.run([HADOLINT, str(bad)], check=False, capture_output=True, timeout=60).returncode != 0


@pytest.mark.parametrize(
    ("dockerfile", "module", "source_dirs"),
    [
        ("Dockerfile.serve", "serving.server", {"modelrepo/", "serving/", "digits/"}),
        ("Dockerfile.train", "jobs.tune", {"modelrepo/", "jobs/"}),
    ],
)
def test_image_conventions(dockerfile: str, module: str, source_dirs: set[str]) -> None:
    lines = [line.strip() for line in (REPO / dockerfile).read_text().splitlines()]
    assert lines[[i for i, line in enumerate(lines) if line and not line.startswith("#")][0]] == (
        "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    )
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2 and all(line.startswith("FROM ${BASE_IMAGE}") for line in froms), "multi-stage"
    final_stage = lines[lines.index(froms[-1]) :]
    assert "USER 10001:10001" in final_stage
    entrypoint = [line for line in final_stage if line.startswith("ENTRYPOINT")]
    assert entrypoint == [f'ENTRYPOINT ["python", "-m", "{module}"]']
    copies = [line.split() for line in lines if line.startswith("COPY ") and "--from" not in line]
    dependency_files = set(copies[0][1:-1])
    assert {"pyproject.toml", "constraints.txt"} <= dependency_files, "dependency files before the source"
    assert all(name.endswith((".toml", ".txt")) for name in dependency_files)
    assert {line[1] for line in copies[1:]} == source_dirs
    # Everything COPY needs is in the build context the .dockerignore lets through.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore and source_dirs | dependency_files <= allowed


def test_compose_file_validates_and_wires_the_stack() -> None:
    text = interpolate((REPO / "compose.yaml").read_text(), {})
    compose = PyCompose.from_yaml(text)
    assert set(compose.service_names()) >= {"tune", "serve", "prometheus", "grafana", "pushgateway"}
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert services["tune"]["environment"]["TUNE_PRESET"] == "smoke"
    assert services["serve"]["depends_on"]["tune"]["condition"] == "service_completed_successfully"
    assert "workspace:/workspace" in services["tune"]["volumes"]
    assert "workspace:/workspace:ro" in services["serve"]["volumes"]
    assert services["serve"]["environment"]["DIGITS_MODEL_ROOT"] == "/workspace/run/models"
    assert {"8500:8500", "8000:8000"} <= set(services["serve"]["ports"])
    assert "grpc_health" in " ".join(services["serve"]["healthcheck"]["test"])
    assert services["pushgateway"]["profiles"] == ["pushgateway"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{service} mounts missing {source}"


def test_compose_mnist_override() -> None:
    template = (REPO / "compose.mnist.yaml").read_text()
    with pytest.raises(ValueError, match="MNIST_DATA_DIR"):
        interpolate(template, {})
    text = interpolate(template, {"MNIST_DATA_DIR": "/srv/mnist"})
    PyCompose.from_yaml(text)
    tune = yaml.safe_load(text)["services"]["tune"]
    assert tune["environment"]["MNIST_DATA_DIR"] == tune["volumes"][0]["target"] == "/data/mnist"
    assert tune["volumes"][0]["read_only"] is True


def test_compose_validation_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        PyCompose.from_yaml("services:\n  serve:\n    image: mnist-serve:latest\n    helthcheck: {}\n")
