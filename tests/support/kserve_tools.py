"""KServe for the tests: its admission rules for what we ship, the predictor container as KServe would
run it (on a read-only mount of the model repository), and its own SDK clients in their virtualenv.

The rules restate KServe's webhooks at aaac4e2 (``pkg/apis/serving/v1beta1/inference_service_validation.go``,
``component.go``, ``pkg/webhook/admission/servingruntime/servingruntime_webhook.go``,
``pkg/validation/env_policy.go``) for the fields our manifests use; the schema checks are in
:mod:`tests.support.crds`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import REPO, free_port

MOUNT_PATH = "/mnt/models"  # where KServe mounts the storageUri in the kserve-container
CONTAINER = "kserve-container"
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # IsvcNameFmt
# Deployment modes and the legacy names KServe folds into them (ParseDeploymentMode).
DEPLOYMENT_MODES = {
    "Standard": "Standard",
    "RawDeployment": "Standard",
    "Knative": "Knative",
    "Serverless": "Knative",
}
AUTOSCALER_CLASSES = {"hpa", "external", "keda", "none"}  # AutoscalerAllowedClassList
HPA_METRICS = {"cpu", "memory"}
KPA_METRICS = {"concurrency", "rps"}
KNATIVE_CLASS = "autoscaling.knative.dev/class"
BLOCKED_ENV = {"PYTHONPATH"}  # DefaultBlockedEnvVars
IMPLEMENTATIONS = (
    "xgboost",
    "pytorch",
    "triton",
    "sklearn",
    "tensorflow",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
    "model",
)
PVC_URI = re.compile(r"^pvc://(?P<claim>[^/]+)/(?P<path>.+)$")


def deployment_mode(isvc: dict[str, Any]) -> str:
    """The mode KServe picks (annotation, legacy names folded; Standard is the default)."""
    raw = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Standard")
    return DEPLOYMENT_MODES.get(raw, raw)


def isvc_admission_errors(isvc: dict[str, Any]) -> list[str]:
    """What KServe's InferenceService webhook rejects in ``isvc`` (empty: admitted)."""
    errors: list[str] = []
    name = isvc["metadata"]["name"]
    annotations = isvc["metadata"].get("annotations", {})
    predictor = isvc["spec"]["predictor"]
    if not ISVC_NAME.match(name):
        errors.append(f"name {name!r} does not match {ISVC_NAME.pattern}")
    mode = annotations.get("serving.kserve.io/deploymentMode")
    if mode is not None and mode not in DEPLOYMENT_MODES and mode != "ModelMesh":
        errors.append(f"deploymentMode {mode!r} is not a deployment mode")
    autoscaler = annotations.get("serving.kserve.io/autoscalerClass")
    if autoscaler is not None and autoscaler not in AUTOSCALER_CLASSES:
        errors.append(f"[{autoscaler}] is not a supported autoscaler class type")
    containers = list(predictor.get("containers", []))
    if "model" in predictor:
        containers.append(predictor["model"])
    for container in containers:
        for env in container.get("env", []):
            if env["name"] in BLOCKED_ENV:
                errors.append(f"setting {env['name']} in container {container.get('name')!r} is not allowed")
    implementations = [key for key in IMPLEMENTATIONS if key in predictor]
    if predictor.get("containers"):
        implementations.append("containers")
    if len(implementations) != 1:
        errors.append(f"exactly one predictor implementation must be specified, found {implementations}")
    for key in IMPLEMENTATIONS:
        if predictor.get(key, {}).get("name"):
            errors.append(f"the 'name' field is not allowed in standard predictor ({key})")
    min_replicas = predictor.get("minReplicas", 1)
    max_replicas = predictor.get("maxReplicas", 0)
    if min_replicas < 0 or max_replicas < 0:
        errors.append("minReplicas and maxReplicas cannot be negative")
    if max_replicas != 0 and min_replicas > max_replicas:
        errors.append("minReplicas cannot be greater than maxReplicas")
    if predictor.get("containerConcurrency", 0) < 0:
        errors.append("containerConcurrency cannot be negative")
    errors.extend(_autoscaling_errors(annotations, predictor))
    if isvc["spec"].get("canary") and annotations.get("serving.kserve.io/deploymentMode") != "Standard":
        errors.append("canary is only supported in Standard deployment mode")
    return errors


def _autoscaling_errors(annotations: dict[str, str], predictor: dict[str, Any]) -> list[str]:
    """validateAutoScalingCompExtension: HPA rules in Standard mode with class hpa, KPA rules in Knative."""
    mode = annotations.get("serving.kserve.io/deploymentMode")
    metric = predictor.get("scaleMetric")
    target = predictor.get("scaleTarget")
    if mode == "Standard":
        if annotations.get("serving.kserve.io/autoscalerClass") != "hpa":
            return []
        return _hpa_errors(metric or "cpu", target, predictor.get("autoScaling"))
    if annotations.get(KNATIVE_CLASS) == "hpa.autoscaling.knative.dev":
        return _hpa_errors(metric or "cpu", target, predictor.get("autoScaling"))
    errors = []
    if predictor.get("deploymentStrategy") is not None:
        errors.append("customizing deploymentStrategy is only supported for raw deployment mode")
    metric = metric or "concurrency"
    if metric not in KPA_METRICS:
        errors.append(f"[{metric}] is not a supported metric")
    if target is not None and metric == "rps" and target < 1:
        errors.append("the target for rps should be greater than 1")
    return errors


def _hpa_errors(metric: str, target: int | None, autoscaling: dict[str, Any] | None) -> list[str]:
    errors = []
    if metric not in HPA_METRICS:
        errors.append(f"[{metric}] is not a supported metric")
    # Go: `metric == MetricCPU && target < 1 || target > 100` (a target above 100 fails for any metric).
    if target is not None and ((metric == "cpu" and target < 1) or target > 100):
        errors.append("the target utilization percentage should be a [1-100] integer")
    if target is not None and metric == "memory" and target < 1:
        errors.append("the target memory should be greater than 1 MiB")
    for spec in (autoscaling or {}).get("metrics", []):
        if spec.get("type") != "Resource":
            errors.append(f"invalid HPA metric source type with value [{spec.get('type')}]")
        elif spec.get("resource") is None:
            errors.append("metricSpec.Resource is not set for resource metric source type")
    return errors


def runtime_admission_errors(runtime: dict[str, Any]) -> list[str]:
    """What KServe's ServingRuntime webhook rejects in ``runtime`` alone (empty: admitted)."""
    errors = []
    spec = runtime["spec"]
    priorities: dict[str, int | None] = {}
    for model_format in spec.get("supportedModelFormats", []):
        if not model_format.get("autoSelect", False):  # IsAutoSelectEnabled: nil means false
            continue
        name, priority = model_format["name"], model_format.get("priority")
        if name in priorities and priorities[name] is not None and priority is not None:
            if priorities[name] != priority:
                errors.append(f"different priorities assigned for the model format {name}")
        priorities.setdefault(name, priority)
    for container in spec["containers"]:
        for env in container.get("env", []):
            if env["name"] in BLOCKED_ENV:
                errors.append(f"setting {env['name']} in container {container['name']!r} is not allowed")
    if spec.get("workerSpec") is not None:
        errors.append("workerSpec (multi-node) is not expected in our runtime")
    return errors


def runtime_fit_errors(runtime: dict[str, Any], isvc: dict[str, Any]) -> list[str]:
    """What the controller needs to pair the InferenceService with this runtime and mount its model."""
    errors = []
    model = isvc["spec"]["predictor"]["model"]
    spec = runtime["spec"]
    if model.get("runtime") != runtime["metadata"]["name"]:
        errors.append(f"the InferenceService names runtime {model.get('runtime')!r}")
    formats = {(f["name"], f.get("version")) for f in spec["supportedModelFormats"]}
    wanted = (model["modelFormat"]["name"], model["modelFormat"].get("version"))
    if wanted not in formats and (wanted[0], None) not in formats:
        errors.append(f"the runtime does not support model format {wanted}")
    if model.get("protocolVersion", "v1") not in spec.get("protocolVersions", ["v1"]):
        errors.append(f"the runtime does not speak protocol {model.get('protocolVersion')}")
    names = [c["name"] for c in spec["containers"]]
    if names[:1] != [CONTAINER]:
        errors.append(f"the runtime's first container must be {CONTAINER!r}, found {names}")
    if not PVC_URI.match(model.get("storageUri", "")):
        errors.append(f"storageUri {model.get('storageUri')!r} is not pvc://<claim>/<path>")
    # GetStorageInitializerReadOnlyFlag: the claim is mounted read-only unless this annotation says "false".
    if isvc["metadata"].get("annotations", {}).get("storage.kserve.io/readonly") == "false":
        errors.append("storage.kserve.io/readonly: false would mount the tune Job's claim read-write")
    return errors


def predictor_container(runtime: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    """The kserve-container as the controller makes it: the runtime's container with the
    InferenceService's model fields merged over it (args appended) and ``{{.Name}}`` etc. filled in."""
    (base,) = [c for c in runtime["spec"]["containers"] if c["name"] == CONTAINER]
    model = isvc["spec"]["predictor"].get("model", {})
    merged = copy.deepcopy(base)
    for key, value in model.items():
        if key in ("modelFormat", "protocolVersion", "runtime", "storageUri", "runtimeVersion", "args"):
            continue
        merged[key] = copy.deepcopy(value)
    merged["args"] = [*base.get("args", []), *model.get("args", [])]
    text = json.dumps(merged)
    for field, value in (("Name", isvc["metadata"]["name"]), ("Namespace", "default")):
        text = text.replace("{{." + field + "}}", value)
    return json.loads(text)


PVC_VOLUME = "kserve-pvc-source"  # constants.PvcSourceMountName
# PredictorSpec's own fields (ComponentExtensionSpec and the implementations): not PodSpec fields.
COMPONENT_FIELDS = {
    "model",
    "containers",
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "autoScaling",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "workerSpec",
    *IMPLEMENTATIONS,
}


def kserve_predictor_pod(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The predictor Pod KServe (Standard mode) makes from the rendered ``ServingRuntime`` and
    ``InferenceService`` (``kubectl kustomize k8s/kserve``), as a Pod document the pod harness plays.

    Each step mimics one behaviour of KServe's controller and pod webhook (aaac4e2):

    1. the container: the runtime's ``kserve-container`` with the model's container fields merged over
       it and ``{{.Name}}`` filled in from the InferenceService (:func:`predictor_container`: the
       predictor reconciler's MergeRuntimeContainers and ReplacePlaceholders), its probes included;
    2. the pod: the predictor's PodSpec fields (securityContext, volumes, automountServiceAccountToken,
       terminationGracePeriodSeconds; not the component fields such as replicas or autoScaling) over the
       runtime's (MergePodSpec); the runtime's ``spec.annotations`` and KServe's labels
       (``serving.kserve.io/inferenceservice``, ``component: predictor``) on the pod;
    3. the model: a ``pvc://<claim>/<path>`` storageUri is a volume ``kserve-pvc-source`` on the claim,
       mounted in the kserve-container at ``/mnt/models`` with ``subPath: <path>``, read-only
       (utils.AddModelPvcMount; no storage-initializer copy since 0.16, read-only unless the
       ``storage.kserve.io/readonly`` annotation says "false", which :func:`runtime_fit_errors` refuses);
    4. the name: the raw Deployment is ``<isvc>-predictor``, so its pod ``<isvc>-predictor-<hash>``.
    """
    (runtime,) = [d for d in documents if d["kind"] in ("ServingRuntime", "ClusterServingRuntime")]
    (isvc,) = [d for d in documents if d["kind"] == "InferenceService"]
    name = isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    container = predictor_container(runtime, isvc)  # 1
    uri = PVC_URI.match(predictor["model"]["storageUri"])
    if uri is None:
        raise ValueError(f"storageUri {predictor['model']['storageUri']!r} is not pvc://<claim>/<path>")
    spec = {  # 2
        key: copy.deepcopy(value)
        for key, value in runtime["spec"].items()
        if key in ("volumes", "nodeSelector", "tolerations", "affinity", "imagePullSecrets")
    }
    spec.update({k: copy.deepcopy(v) for k, v in predictor.items() if k not in COMPONENT_FIELDS})
    volume = {"name": PVC_VOLUME, "persistentVolumeClaim": {"claimName": uri["claim"], "readOnly": True}}
    spec["volumes"] = [*spec.get("volumes", []), volume]  # 3
    mount = {"name": PVC_VOLUME, "mountPath": MOUNT_PATH, "subPath": uri["path"], "readOnly": True}
    container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    spec["containers"] = [container]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    labels = {
        **isvc["metadata"].get("labels", {}),
        "serving.kserve.io/inferenceservice": name,
        "component": "predictor",
        "app": f"isvc.{name}-predictor",
    }
    annotations = {**runtime["spec"].get("annotations", {}), **isvc["metadata"].get("annotations", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-predictor-{digest}", "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def image_entrypoint() -> list[str]:
    """``ENTRYPOINT`` of Dockerfile.serve (exec form), with this interpreter for ``python``."""
    text = (REPO / "Dockerfile.serve").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("ENTRYPOINT ")]
    entry = json.loads(line.removeprefix("ENTRYPOINT "))
    return [sys.executable if entry[0] == "python" else entry[0], *entry[1:]]


@dataclass
class Predictor:
    """The kserve-container's process, its ports (container port -> local port) and its mount."""

    process: subprocess.Popen
    ports: dict[int, int]
    mount: Path
    log: Path

    def url(self, container_port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}{path}"

    def target(self, container_port: int) -> str:
        return f"127.0.0.1:{self.ports[container_port]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_predictor(container: dict[str, Any], claim_root: Path, sub_path: str, workdir: Path) -> Predictor:
    """Run ``container`` as the kubelet would under KServe: the image's entrypoint with the container's
    args and env, the claim's ``sub_path`` bind-mounted read-only where KServe mounts it.

    The one change from the pod (here, in one place): ``/mnt/models`` is a folder under ``workdir`` (the
    read-only bind mount is made in a private mount namespace by ``unshare``), and each container port
    is a free local port (the env and flags that set them are rewritten to match).
    """
    if shutil.which("unshare") is None:
        raise AssertionError("missing system tool unshare (util-linux): run scripts/setup.sh dev")
    source = claim_root / sub_path
    source.mkdir(parents=True, exist_ok=True)
    mount = workdir / MOUNT_PATH.lstrip("/")
    mount.mkdir(parents=True, exist_ok=True)
    ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    for item in container.get("env", []):
        value = item["value"]
        if item["name"].endswith("_PORT"):  # DIGITS_PORT, DIGITS_HTTP_PORT, DIGITS_METRICS_PORT
            value = str(ports[int(value)])
        env[item["name"]] = value
    args = [arg.replace(MOUNT_PATH, str(mount)) for arg in container.get("args", [])]
    command = [*image_entrypoint(), *args]
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")  # a user namespace lets an unprivileged user bind-mount
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    log = workdir / "predictor.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*unshare, "sh", "-c", script, "sh", str(source), str(mount), *command],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Predictor(process, ports, mount, log)


def mount_options(pid: int, mount: Path) -> list[str]:
    """The options of ``mount`` as the process ``pid`` sees it (its own mount namespace)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount):
            return fields[5].split(",")
    raise AssertionError(f"{mount} is not a mount point in process {pid}'s namespace")


def sdk_answers(rest_url: str, grpc_target: str, model: str, images: np.ndarray, workdir: Path) -> dict:
    """KServe's REST and gRPC clients (tests/support/kserve_client.py) on ``images``, from .venv-kserve."""
    if not KSERVE_PYTHON.exists():
        raise AssertionError(
            f"{KSERVE_PYTHON} is missing: run scripts/setup.sh dev (requirements-kserve.txt)"
        )
    np.save(workdir / "images.npy", images)
    result = subprocess.run(
        [
            str(KSERVE_PYTHON),
            str(REPO / "tests/support/kserve_client.py"),
            rest_url,
            grpc_target,
            model,
            str(workdir / "images.npy"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=workdir,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
