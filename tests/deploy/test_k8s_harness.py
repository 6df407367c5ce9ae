"""The pod-playing harness (tests/support/kube.py) without podman: what ``pytest -m k8s`` plays must be what
the controllers would create from ``k8s/``, changed only where podman forces it."""

from __future__ import annotations

import copy

import pytest

from jobs.errors import EXIT_DISTRIBUTED, EXIT_EXPORT, EXIT_INTERRUPTED, FAIL_JOB_CODES
from tests.support import REPO
from tests.support.katib_tools import katib_trial_pod, stdout_collector_script, substitute
from tests.support.kserve_tools import kserve_predictor_pod
from tests.support.kube import (
    INDEX_ENV,
    INDEX_KEY,
    Deviations,
    find,
    for_podman,
    job_outcome,
    pods_for,
    render,
)
from tests.support.tools import require_tools

IMAGES = {"mnist-tune": "localhost/mnist-tune:test", "mnist-serve": "localhost/mnist-serve:test"}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    require_tools("kubectl")
    return render(REPO / "k8s", IMAGES, tmp_path_factory.mktemp("render"))


def test_render_points_the_images_at_the_given_builds_and_leaves_k8s_alone(manifests: list[dict]) -> None:
    before = (REPO / "k8s" / "kustomization.yaml").read_text()
    job, deployment = find(manifests, "Job", "mnist-tune"), find(manifests, "Deployment", "mnist-serve")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["mnist-tune"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["mnist-serve"]
    assert (REPO / "k8s" / "kustomization.yaml").read_text() == before


def test_indexed_job_pods_are_what_the_job_controller_creates(manifests: list[dict]) -> None:
    job = find(manifests, "Job", "mnist-tune")
    template = job["spec"]["template"]
    pods = pods_for(job, uid="uid-1")
    assert [p["metadata"]["name"] for p in pods] == ["mnist-tune-0", "mnist-tune-1", "mnist-tune-2"]
    for index, pod in enumerate(pods):
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["annotations"][INDEX_KEY] == str(index)
        assert meta["labels"][INDEX_KEY] == str(index)
        assert meta["labels"]["batch.kubernetes.io/controller-uid"] == "uid-1"
        assert meta["labels"]["batch.kubernetes.io/job-name"] == "mnist-tune"
        assert template["metadata"]["labels"].items() <= meta["labels"].items()
        assert spec["hostname"] == f"mnist-tune-{index}"
        assert spec["subdomain"] == template["spec"]["subdomain"] == "mnist-tune"
        assert spec["restartPolicy"] == "Never"
        env = spec["containers"][0]["env"]
        injected = [var for var in env if var["name"] == INDEX_ENV]
        assert injected == [
            {
                "name": INDEX_ENV,
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
            }
        ]
        # Everything else verbatim.
        rest = copy.deepcopy(spec)
        del rest["hostname"]
        rest["containers"][0]["env"] = [var for var in env if var["name"] != INDEX_ENV]
        assert rest == template["spec"]
    assert [p["metadata"]["name"] for p in pods_for(job, uid="uid-1", indexes=[0])] == ["mnist-tune-0"]


def test_non_indexed_jobs_and_deployments_get_their_template_unchanged(manifests: list[dict]) -> None:
    job = find(manifests, "Job", "mnist-tune")
    one_off = dict(job, spec={**job["spec"], "completionMode": "NonIndexed", "parallelism": 1})
    (pod,) = pods_for(one_off, uid="uid-2")
    assert INDEX_KEY not in pod["metadata"]["annotations"]
    assert pod["spec"] == job["spec"]["template"]["spec"]  # no index, no hostname: a standalone job
    deployment = find(manifests, "Deployment", "mnist-serve")
    pods = pods_for(deployment)
    assert len(pods) == deployment["spec"]["replicas"]
    assert all(p["spec"] == deployment["spec"]["template"]["spec"] for p in pods)
    with pytest.raises(ValueError, match="StatefulSet"):
        pods_for({"kind": "StatefulSet"})


def test_for_podman_changes_only_what_podman_forces_and_says_so(manifests: list[dict]) -> None:
    job = find(manifests, "Job", "mnist-tune")
    pods = pods_for(job, uid="uid-3")
    addresses = {p["metadata"]["name"]: f"10.0.0.{i + 2}" for i, p in enumerate(pods)}
    deviations = Deviations(addresses=addresses, env={"TUNE_PRESET": "smoke"}, host_paths={"/data": "/mnist"})
    pod, changes = for_podman(pods[1], deviations)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert "ports" not in container
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["requests"]["memory"] == "6Gi"  # other resources as written
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert {"ip": "10.0.0.2", "hostnames": ["mnist-tune-0.mnist-tune"]} in spec["hostAliases"]
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["TUNE_PRESET"] == "smoke"
    assert env["TUNE_DATA_CACHE"] == "/workspace/.cache/mnist-1"  # $(POD_INDEX), as the kubelet expands it
    assert {"name": "host-0", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    original = pods[1]["spec"]["containers"][0]
    for key in ("securityContext", "command", "args", "image", "volumeMounts"):
        if key == "volumeMounts":
            assert container[key][: len(original[key])] == original[key]
        else:
            assert container.get(key) == original.get(key), key
    assert spec["securityContext"] == pods[1]["spec"]["securityContext"]
    assert spec["volumes"][:2] == pods[1]["spec"]["volumes"]
    # One printed line per change, none silent.
    for word in ("ports", "nvidia.com/gpu", "nodeSelector", "tolerations", "hostAliases", "TUNE_PRESET"):
        assert any(word in line for line in changes), word
    assert any("TUNE_DATA_CACHE=/workspace/.cache/mnist-1" in line for line in changes)
    assert any("hostPath /mnist" in line for line in changes)
    assert pods[1] == pods_for(job, uid="uid-3")[1], "for_podman changed its input"


def test_the_kserve_predictor_pod_is_a_strict_pod_whose_claim_subpath_becomes_a_host_folder(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """kserve_predictor_pod: what KServe's controller makes of k8s/kserve; for_podman: podman 4.3 ignores a
    subPath on a claim (it mounted the whole claim at /mnt/models), so that mount becomes a hostPath."""
    import kubernetes_validate

    documents = render(REPO / "k8s" / "kserve", IMAGES, tmp_path_factory.mktemp("kserve"))
    pod = kserve_predictor_pod(documents)
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    assert pod["metadata"]["name"].startswith("mnist-predictor-")
    (container,) = pod["spec"]["containers"]
    assert (container["name"], container["image"]) == ("kserve-container", IMAGES["mnist-serve"])
    assert "--default-model=mnist" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"
    mount = {
        "name": "kserve-pvc-source",
        "mountPath": "/mnt/models",
        "subPath": "run/models",
        "readOnly": True,
    }
    assert mount in container["volumeMounts"]
    claim = {"claimName": "mnist-workspace", "readOnly": True}
    assert {"name": "kserve-pvc-source", "persistentVolumeClaim": claim} in pod["spec"]["volumes"]
    assert "minReplicas" not in pod["spec"] and "model" not in pod["spec"]  # component fields, not the pod's
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001

    with pytest.raises(LookupError, match="subPath of claim mnist-workspace"):
        for_podman(pod, Deviations())
    played, changes = for_podman(pod, Deviations(claims={"mnist-workspace": "/volumes/ws"}))
    (mounted,) = [
        m for m in played["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models"
    ]
    assert "subPath" not in mounted and mounted["readOnly"] is True
    (volume,) = [v for v in played["spec"]["volumes"] if v["name"] == mounted["name"]]
    assert volume["hostPath"]["path"] == "/volumes/ws/run/models"
    assert any("subPath" in line and "/volumes/ws/run/models" in line for line in changes), changes
    assert mount in pod["spec"]["containers"][0]["volumeMounts"], "for_podman changed its input"


def test_a_katib_trial_pod_is_its_job_pod_with_the_collectors_rewrite_expanded_as_the_kubelet(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import kubernetes_validate

    (experiment,) = render(REPO / "k8s" / "katib", IMAGES, tmp_path_factory.mktemp("katib"))
    assignment = {
        p["name"]: p["feasibleSpace"]["list"][0]
        if "list" in p["feasibleSpace"]
        else p["feasibleSpace"]["min"]
        for p in experiment["spec"]["parameters"]
    }
    pod = katib_trial_pod(experiment, assignment, "mnist-seed-abcd0001", uid="uid-4")
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    assert pod["metadata"]["labels"]["katib.kubeflow.org/trial"] == "mnist-seed-abcd0001"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGES["mnist-tune"] and container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    assert script.endswith("1>/var/log/katib/metrics.log 2>&1 && echo completed > /var/log/katib/$$$$.pid")
    assert "--trial-dir=/workspace/katib/mnist-seed/mnist-seed-abcd0001" in script
    assert {"name": "metrics-volume", "mountPath": "/var/log/katib"} in container["volumeMounts"]
    assert {"name": "metrics-volume", "emptyDir": {}} in pod["spec"]["volumes"]
    job = substitute(experiment, assignment, "mnist-seed-abcd0001")
    played, changes = for_podman(pod, Deviations())
    # What the shell gets: the kubelet's `$$` -> `$`, i.e. the string test_katib.py runs as a subprocess.
    assert played["spec"]["containers"][0]["args"] == [
        stdout_collector_script(job["spec"]["template"]["spec"]["containers"][0])
    ]
    assert any("$$" in line for line in changes), changes


def test_job_outcome_follows_the_jobs_failure_and_success_policies(manifests: list[dict]) -> None:
    job = find(manifests, "Job", "mnist-tune")
    assert job_outcome(job, {0: 0, 1: 0, 2: 0}) == "Complete"
    assert job_outcome(job, {0: 0}) == "Complete"  # successPolicy: the chief alone completes the Job
    assert job_outcome(job, {1: 0, 2: 0}) == "running"
    for code in FAIL_JOB_CODES:
        assert job_outcome(job, {0: code}) == "FailJob", code
    for code in (EXIT_EXPORT, EXIT_DISTRIBUTED, EXIT_INTERRUPTED, 137):
        assert job_outcome(job, {1: code}) == "replace [1]", code
    without_policy = dict(job, spec={k: v for k, v in job["spec"].items() if k != "successPolicy"})
    assert job_outcome(without_policy, {0: 0}) == "running"


def test_every_kind_of_change_is_listed_in_the_docs() -> None:
    text = (REPO / "docs" / "deployment.md").read_text()
    section = text[text.index("## The manifests, played") :]
    for word in (
        "ports",
        "nvidia.com/gpu",
        "nodeSelector",
        "tolerations",
        "hostAliases",
        "$(",
        "hostPath",
        "subPath",
    ):
        assert word in section, word
    assert "TUNE_PRESET=smoke" in section and "tests/support/kube.py" in section
