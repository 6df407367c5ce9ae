"""k8s/tune-job.yaml: strict schema check for Kubernetes 1.30 and 1.37, and agreement with the job's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.distributed.roles import DistributedConfig
from jobs.errors import EXIT_DISTRIBUTED, FAIL_JOB_CODES

MANIFEST = Path(__file__).resolve().parents[2] / "k8s" / "tune-job.yaml"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifest_passes_strict_schema_validation(version: str) -> None:
    result = subprocess.run(
        [str(VALIDATE), "-k", version, "--strict", str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("persistentvolumeclaim", "service", "job"):
        assert f"passed for resource {kind}/" in result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text().replace("completionMode: Indexed", "completionMod: Indexed"))
    result = subprocess.run(
        [str(VALIDATE), "-k", "1.30.0", "--strict", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "completionMod" in result.stdout + result.stderr


def test_job_service_and_claim_fit_together() -> None:
    docs = documents()
    job, service, claim = docs["Job"], docs["Service"], docs["PersistentVolumeClaim"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}

    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    # Stable host names: subdomain = headless Service = the name the workers are told.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"] == env["TUNE_DISTRIBUTED__SERVICE"]["value"]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(key) == value for key, value in service["spec"]["selector"].items())
    port = int(env["TUNE_DISTRIBUTED__PORT"]["value"])
    assert service["spec"]["ports"][0]["port"] == port == container["ports"][0]["containerPort"]
    assert DistributedConfig(service="x", port=port).port == port
    # One shared volume, writable by every pod at once.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [claim["metadata"]["name"]]
    assert env["TUNE_OUTPUT"]["value"] == "/workspace/run"
    assert container["image"] == "mnist-tune:latest"


def test_failure_policy_uses_the_jobs_exit_codes() -> None:
    spec = documents()["Job"]["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail) == 1
    assert fail[0]["onExitCodes"]["operator"] == "In"
    assert sorted(fail[0]["onExitCodes"]["values"]) == sorted(FAIL_JOB_CODES)
    assert fail[0]["onExitCodes"]["containerName"] == spec["template"]["spec"]["containers"][0]["name"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    # Exit 6 (lost chief) must be retried, never fail the Job outright.
    assert all(EXIT_DISTRIBUTED not in r.get("onExitCodes", {}).get("values", []) for r in rules)
    assert spec["backoffLimit"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_pods_run_non_root_on_gpu_nodes() -> None:
    pod = documents()["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
