"""The Kubernetes manifests render with kustomize, pass kubernetes-validate --strict and fit together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support import REPO
from tests.support.tools import require_tools

K8S = REPO / "k8s"
VERSIONS = ("1.30.0", "1.37.0")
# Prometheus Operator kinds: kubernetes-validate ships only the core schemas, so these are checked by
# hand below (metadata via a core kind, rules with promtool, selectors against the Deployment).
CRD_GROUP = "monitoring.coreos.com/v1"


@pytest.fixture(autouse=True)
def _tools():
    require_tools("kubectl", "promtool")


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(documents: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def test_kustomization_lists_every_manifest(documents: list[dict]) -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    kinds = {d["kind"] for d in documents}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "PersistentVolumeClaim",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_passes_strict_validation(documents: list[dict], version: str) -> None:
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == CRD_GROUP:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            # What can be checked with the core schemas: the ObjectMeta, carried by a ConfigMap.
            carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
            kubernetes_validate.validate(carrier, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} fails Kubernetes {version} strict validation: {exc.message}")


def test_strict_validation_catches_an_unknown_field(documents: list[dict]) -> None:
    deployment = find(documents, "Deployment", "mnist-serve")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_serving_pod_is_hardened_and_probed(documents: list[dict]) -> None:
    pod = find(documents, "Deployment", "mnist-serve")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split("/")[-1].startswith("mnist-serve:")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8080, "metrics": 8000}
    # Ready (service "") only with a model loaded; started and alive (service "liveness") without one.
    from serving.server import LIVENESS_SERVICE

    assert container["readinessProbe"]["grpc"] == {"port": 8500}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 8500, "service": LIVENESS_SERVICE}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # /tmp is the only writable path; the model volume is mounted read-only at the model root's parent.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    workspace = mounts["/workspace"]
    assert workspace["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DIGITS_MODEL_ROOT"].startswith("/workspace/")
    claim = volumes[workspace["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    find(documents, "PersistentVolumeClaim", claim["claimName"])  # the claim the tune Job writes


def test_job_and_service_share_the_model_volume(documents: list[dict]) -> None:
    job = find(documents, "Job", "mnist-tune")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["image"].split("/")[-1].startswith("mnist-tune:")
    env = {e["name"]: e.get("value") for e in container["env"]}
    serve = find(documents, "Deployment", "mnist-serve")["spec"]["template"]["spec"]
    serve_env = {e["name"]: e.get("value") for e in serve["containers"][0]["env"]}
    assert serve_env["DIGITS_MODEL_ROOT"] == f"{env['TUNE_OUTPUT']}/models"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v}
    serve_claims = {
        v["persistentVolumeClaim"]["claimName"] for v in serve["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == serve_claims


def test_selectors_and_ports_line_up(documents: list[dict]) -> None:
    deployment = find(documents, "Deployment", "mnist-serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}

    def selects(selector: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items())

    assert selects(deployment["spec"]["selector"])
    service = find(documents, "Service", "mnist-serve")
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert selects(find(documents, "PodDisruptionBudget", "mnist-serve")["spec"]["selector"])
    policy = find(documents, "NetworkPolicy", "mnist-serve")["spec"]
    assert selects(policy["podSelector"])
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == port_names
    monitor = find(documents, "PodMonitor", "mnist-serve")["spec"]
    assert selects(monitor["selector"])
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} == {"metrics"}
    target = find(documents, "HorizontalPodAutoscaler", "mnist-serve")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "mnist-serve")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000"


def test_prometheusrule_matches_the_monitoring_rules(documents: list[dict], tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import importlib

        generator = importlib.import_module("gen-prometheusrule")
    finally:
        sys.path.pop(0)
    committed = (K8S / "prometheusrule.yaml").read_text()
    assert committed == generator.render(), (
        "k8s/prometheusrule.yaml is stale: run scripts/gen-prometheusrule.py"
    )
    source = yaml.safe_load((REPO / "monitoring" / "rules" / "digits-alerts.yml").read_text())
    rule = find(documents, "PrometheusRule", "mnist-digits")
    assert rule["spec"]["groups"] == source["groups"]
    # The Operator hands spec.groups to Prometheus as a rule file: promtool must accept it.
    extracted = tmp_path / "operator-rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    subprocess.run(["promtool", "check", "rules", str(extracted)], check=True, capture_output=True)


def test_tune_oracle_is_reachable_from_tune_pods_only(documents: list[dict]) -> None:
    pod = find(documents, "Job", "mnist-tune")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    policy = find(documents, "NetworkPolicy", "mnist-tune")["spec"]
    assert all(labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["oracle"] and "oracle" in ports
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector / ipBlock: same namespace, tune pods only
    assert all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())


def test_serving_environment_names_real_settings(documents: list[dict]) -> None:
    """Every variable of the container is a service setting: the service ignores unknown DIGITS_*
    variables and reads no other, so a typo or a foreign variable (TF_NUM_INTRAOP_THREADS, which the
    service's own thread setting overrides) would pass silently."""
    from serving.settings import Settings

    container = find(documents, "Deployment", "mnist-serve")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env
    unknown = [
        name
        for name in env
        if not name.startswith("DIGITS_") or name.removeprefix("DIGITS_").lower() not in Settings.model_fields
    ]
    assert not unknown, f"not service settings: {unknown}"
    settings = Settings(**{name.removeprefix("DIGITS_").lower(): value for name, value in env.items()})
    assert (settings.port, settings.http_port, settings.metrics_port) == (8500, 8080, 8000)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["grpc"], ports["http"], ports["metrics"]) == (8500, 8080, 8000)
    # The SIGTERM grace must end before Kubernetes kills the pod.
    grace = find(documents, "Deployment", "mnist-serve")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert settings.grace_seconds < grace
