"""Dockerfiles pass hadolint and follow the image conventions; the compose files validate."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from tests.support import REPO

DOCKERFILES = (
    "Dockerfile.serve",
    "Dockerfile.train",
    # The e2e test's stand-ins for the Prometheus and Pushgateway images (tests/deploy/test_e2e.py).
    "tests/deploy/compose/prometheus.Containerfile",
    "tests/deploy/compose/pushgateway.Containerfile",
)
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


def test_the_documented_retrain_is_the_one_the_e2e_test_runs() -> None:
    """The docs and compose.yaml name the command `pytest -m e2e` runs to retrain."""
    from tests.deploy.test_e2e import RETRAIN

    command = "docker compose " + shlex.join(RETRAIN)
    for name in ("README.md", "docs/deployment.md", "docs/tuning.md", "compose.yaml"):
        assert command in (REPO / name).read_text(), f"{name} does not show the retrain: {command}"


def test_compose_validation_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        PyCompose.from_yaml("services:\n  serve:\n    image: mnist-serve:latest\n    helthcheck: {}\n")


# --- Grafana, offline: no Grafana server can run here (no image to pull, no Debian package). ---
GRAFANA = REPO / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "digits.json"
# Keys Grafana's own UI writes that its published dashboard schema does not list (the display text of
# a query variable); everything else in the dashboard must be known to Grafana 11.2's schema types.
UNSCHEMATIZED_KEYS = {"/templating/list[]/definition"}


def grafana_mounts() -> dict[str, Path]:
    """Container path -> host path of the grafana service's bind mounts in compose.yaml."""
    grafana = yaml.safe_load(interpolate((REPO / "compose.yaml").read_text(), {}))["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = (REPO / source).resolve()
    return mounts


def host_path(container_path: str, mounts: dict[str, Path]) -> Path:
    """Where a path inside the Grafana container comes from on the host, through the compose mounts."""
    for target, source in mounts.items():
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not under any grafana mount of compose.yaml: {sorted(mounts)}")


def provisioned_datasources() -> list[dict]:
    files = sorted((GRAFANA / "provisioning" / "datasources").glob("*.y*ml"))
    return [ds for file in files for ds in yaml.safe_load(file.read_text())["datasources"]]


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    mounts = grafana_mounts()
    # Grafana reads provisioning from /etc/grafana/provisioning (its default paths.provisioning).
    assert host_path("/etc/grafana/provisioning", mounts) == (GRAFANA / "provisioning").resolve()
    providers = [
        provider
        for file in sorted((GRAFANA / "provisioning" / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    assert providers, "no dashboard provider"
    for provider in providers:
        assert provider["type"] == "file"
        folder = host_path(provider["options"]["path"], mounts)
        assert folder.is_dir() and DASHBOARD.resolve() in {p.resolve() for p in folder.glob("*.json")}
    grafana = yaml.safe_load(interpolate((REPO / "compose.yaml").read_text(), {}))["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(home, mounts).resolve() == DASHBOARD.resolve()
    # The datasource points at the compose service that runs Prometheus, on its port.
    services = yaml.safe_load(interpolate((REPO / "compose.yaml").read_text(), {}))["services"]
    for datasource in provisioned_datasources():
        host, port = datasource["url"].removeprefix("http://").split(":")
        assert host in services and services[host]["image"].startswith("prom/prometheus")
        assert f"{port}:{port}" in services[host]["ports"]


def test_every_panel_uses_the_provisioned_datasource() -> None:
    datasources = provisioned_datasources()
    assert len(datasources) == 1, "one datasource: every panel refers to it"
    expected = {"type": datasources[0]["type"], "uid": datasources[0]["uid"]}
    dashboard = json.loads(DASHBOARD.read_text())
    checked = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            assert not panel.get("targets"), f"row {panel['title']} has queries"
            continue
        assert panel.get("datasource") == expected, f"panel {panel['title']}: {panel.get('datasource')}"
        assert panel["targets"], f"panel {panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, f"{panel['title']}/{target['refId']}"
            checked += 1
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == expected, f"variable {variable['name']}"
    assert checked >= 10


def unknown_keys(original: object, decoded: object, path: str = "") -> set[str]:
    """Keys of ``original`` that did not survive decoding (list indices written as ``[]``)."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        missing = {f"{path}/{key}" for key in original if key not in decoded}
        for key in original.keys() & decoded.keys():
            missing |= unknown_keys(original[key], decoded[key], f"{path}/{key}")
        return missing
    if isinstance(original, list) and isinstance(decoded, list):
        assert len(original) == len(decoded), f"{path}: {len(original)} items became {len(decoded)}"
        return set().union(*(unknown_keys(a, b, f"{path}[]") for a, b in zip(original, decoded, strict=True)))
    return set()


def decode_dashboard(data: dict) -> dict:
    """The dashboard through grafana-foundation-sdk's Grafana 11.2 types (panels, options, queries)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and Prometheus queries decode to their own types
    return json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))


def test_dashboard_fits_grafanas_published_schema() -> None:
    """grafana-foundation-sdk ships no JSON Schema file: its types are generated from the schemas Grafana
    publishes, so decoding with them and comparing keys finds anything Grafana 11.2 does not know."""
    data = json.loads(DASHBOARD.read_text())
    decoded = decode_dashboard(data)
    assert unknown_keys(data, decoded) == UNSCHEMATIZED_KEYS
    assert decoded["schemaVersion"] == data["schemaVersion"]
    # The panels keep their types and queries through the typed model.
    assert [p["type"] for p in decoded["panels"]] == [p["type"] for p in data["panels"]]
    assert [t["expr"] for p in decoded["panels"] for t in p.get("targets", [])] == [
        t["expr"] for p in data["panels"] for t in p.get("targets", [])
    ]


def test_schema_check_catches_a_misspelt_key() -> None:
    data = json.loads(DASHBOARD.read_text())
    panel = next(p for p in data["panels"] if p["type"] == "stat")
    panel["datasorce"] = panel.pop("datasource")
    panel["options"]["reduceOptions"]["calcz"] = ["lastNotNull"]
    found = unknown_keys(data, decode_dashboard(data)) - UNSCHEMATIZED_KEYS
    assert found == {"/panels[]/datasorce", "/panels[]/options/reduceOptions/calcz"}
