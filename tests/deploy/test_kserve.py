"""k8s/kserve: the runtime and InferenceService render, pass KServe's CRD schemas strictly and its admission
rules, fit the tune Job's claim; and the predictor, run as KServe would run it on a read-only mount of the
model repository, answers KServe's own SDK clients and serves a new version without a restart."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.support import REPO, wait_for
from tests.support.crds import crd_validator, schema_errors
from tests.support.kserve_tools import (
    CONTAINER,
    MOUNT_PATH,
    PVC_URI,
    Predictor,
    deployment_mode,
    isvc_admission_errors,
    mount_options,
    predictor_container,
    runtime_admission_errors,
    runtime_fit_errors,
    sdk_answers,
    start_predictor,
)
from tests.support.tools import require_tools

KSERVE = REPO / "k8s" / "kserve"
VARIANTS = ("", "knative-http", "knative-grpc")


def render(path: Path) -> list[dict]:
    require_tools("kubectl")
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, dict]]:
    """variant -> kind -> the one document of that kind."""
    result = {}
    for variant in VARIANTS:
        docs = render(KSERVE / variant)
        kinds = [d["kind"] for d in docs]
        assert sorted(kinds) == ["InferenceService", "ServingRuntime"], (variant, kinds)
        result[variant] = {d["kind"]: d for d in docs}
    return result


def all_errors(runtime: dict, isvc: dict) -> list[str]:
    """Schema first: the API server rejects a document its schema refuses before any webhook sees it."""
    schema = [
        *schema_errors(crd_validator("ServingRuntime"), runtime),
        *schema_errors(crd_validator("InferenceService"), isvc),
    ]
    if schema:
        return schema
    return [
        *runtime_admission_errors(runtime),
        *isvc_admission_errors(isvc),
        *runtime_fit_errors(runtime, isvc),
    ]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v or "standard")
def test_each_variant_passes_schema_and_admission(rendered, variant: str) -> None:
    docs = rendered[variant]
    assert all_errors(docs["ServingRuntime"], docs["InferenceService"]) == []


def test_the_runtime_also_fits_as_a_cluster_serving_runtime(rendered) -> None:
    """Teams sharing one runtime across namespaces: the same spec as a ClusterServingRuntime."""
    runtime = copy.deepcopy(rendered[""]["ServingRuntime"])
    runtime["kind"] = "ClusterServingRuntime"
    assert schema_errors(crd_validator("ClusterServingRuntime"), runtime) == []
    runtime["spec"]["containers"][0]["ports"][0]["port"] = 8080
    assert schema_errors(crd_validator("ClusterServingRuntime"), runtime)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        elif last.isdigit() and int(last) == len(node):
            node.append(value)
        else:
            node[int(last) if last.isdigit() else last] = value

    return apply


_DELETE = object()

# Each breaks one thing; every one must be caught (kind of document, mutation, expected error fragment).
BROKEN = {
    "unknown field in the model": (
        "InferenceService",
        _set("spec.predictor.model.storageURI", "x"),
        "storageURI",
    ),
    "unknown field in the probe": (
        "ServingRuntime",
        _set("spec.containers.0.readinessProbe.httpGet.paht", "/x"),
        "paht",
    ),
    "wrong type": ("InferenceService", _set("spec.predictor.minReplicas", "two"), "minReplicas"),
    "enum": ("InferenceService", _set("spec.predictor.autoScaling.metrics.0.type", "Object"), "Object"),
    "quantity pattern": ("ServingRuntime", _set("spec.containers.0.resources.limits.cpu", "two"), "cpu"),
    "missing required": ("ServingRuntime", _set("spec.containers", _DELETE), "containers"),
    "isvc name pattern": ("InferenceService", _set("metadata.name", "MNIST_model"), "does not match"),
    "autoscaler class": ("InferenceService", None, "autoscaler class"),  # its key holds dots: set below
    "writable model mount": ("InferenceService", None, "read-write"),  # as above
    "hpa metric": ("InferenceService", _set("spec.predictor.scaleMetric", "rps"), "not a supported metric"),
    "hpa target above 100": ("InferenceService", _set("spec.predictor.scaleTarget", 170), "[1-100]"),
    "hpa metric source": (
        "InferenceService",
        _set("spec.predictor.autoScaling.metrics.0.type", "External"),
        "metric source type",
    ),
    "replicas order": (
        "InferenceService",
        _set("spec.predictor.minReplicas", 11),
        "greater than maxReplicas",
    ),
    "blocked env": (
        "ServingRuntime",
        _set("spec.containers.0.env.0", {"name": "PYTHONPATH", "value": "/x"}),
        "PYTHONPATH",
    ),
    "two implementations": ("InferenceService", _set("spec.predictor.tensorflow", {}), "exactly one"),
    "name in the model": ("InferenceService", _set("spec.predictor.model.name", "m"), "'name' field"),
    "format priority": (
        "ServingRuntime",
        _set(
            "spec.supportedModelFormats.1",
            {"name": "tensorflow", "version": "1", "autoSelect": True, "priority": 1},
        ),
        "different priorities",
    ),
    "runtime not named": (
        "InferenceService",
        _set("spec.predictor.model.runtime", "kserve-tensorflow-serving"),
        "",
    ),
    "protocol the runtime lacks": (
        "InferenceService",
        _set("spec.predictor.model.protocolVersion", "v1"),
        "v1",
    ),
    "model format": ("InferenceService", _set("spec.predictor.model.modelFormat.version", "1"), "format"),
    "container name": ("ServingRuntime", _set("spec.containers.0.name", "server"), CONTAINER),
    "storage uri": ("InferenceService", _set("spec.predictor.model.storageUri", "/data/models"), "pvc://"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_fails(rendered, case: str) -> None:
    kind, mutate, fragment = BROKEN[case]
    runtime = copy.deepcopy(rendered[""]["ServingRuntime"])
    isvc = copy.deepcopy(rendered[""]["InferenceService"])
    target = runtime if kind == "ServingRuntime" else isvc
    if case == "autoscaler class":
        # "kpa" is a class name, but not one KServe allows on an InferenceService
        target["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] = "kpa"
    elif case == "writable model mount":
        target["metadata"]["annotations"]["storage.kserve.io/readonly"] = "false"
    else:
        mutate(target)
    errors = all_errors(runtime, isvc)
    assert errors, f"{case}: the broken copy passed"
    assert any(fragment in error for error in errors), errors


def test_standard_mode_matches_the_plain_hpa(rendered) -> None:
    """Standard mode by default, with k8s/serve-hpa.yaml's replicas, CPU target and scale-down."""
    isvc = rendered[""]["InferenceService"]
    assert deployment_mode(isvc) == "Standard"
    predictor = isvc["spec"]["predictor"]
    hpa = yaml.safe_load((REPO / "k8s" / "serve-hpa.yaml").read_text())["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert predictor["autoScaling"]["metrics"] == hpa["metrics"]
    assert predictor["autoScaling"]["behavior"] == hpa["behavior"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"


def test_knative_variants_route_one_port(rendered) -> None:
    """Knative routes one port: http1 for REST, h2c for gRPC, with probes on that port."""
    expected = {"knative-http": ("http1", 8080, "v2"), "knative-grpc": ("h2c", 8500, "grpc-v2")}
    for variant, (name, port, protocol) in expected.items():
        runtime, isvc = rendered[variant]["ServingRuntime"], rendered[variant]["InferenceService"]
        assert deployment_mode(isvc) == "Knative"
        (container,) = runtime["spec"]["containers"]
        assert container["ports"] == [{"name": name, "containerPort": port, "protocol": "TCP"}]
        assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == protocol
        for probe in ("readinessProbe", "livenessProbe"):
            handler = container[probe].get("httpGet") or container[probe].get("grpc")
            assert handler["port"] == port, (variant, probe)
        assert "startupProbe" not in container


def test_the_model_comes_from_the_tune_jobs_claim(rendered) -> None:
    """storageUri = the tune Job's claim and output: the server's model root is /mnt/models."""
    isvc = rendered[""]["InferenceService"]
    match = PVC_URI.match(isvc["spec"]["predictor"]["model"]["storageUri"])
    tune = [d for d in yaml.safe_load_all((REPO / "k8s" / "tune-job.yaml").read_text()) if d]
    claim = next(d for d in tune if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    job = next(d for d in tune if d["kind"] == "Job")["spec"]["template"]["spec"]
    (volume,) = [v for v in job["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in job["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in job["containers"][0]["env"]}
    assert match["claim"] == claim
    assert f"{mount['mountPath']}/{match['path']}" == f"{env['TUNE_OUTPUT']}/models"
    container = predictor_container(rendered[""]["ServingRuntime"], isvc)
    assert f"--model-root={MOUNT_PATH}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/mnist/ready"


def test_runtime_env_names_real_settings(rendered) -> None:
    from serving.settings import Settings

    container = predictor_container(rendered[""]["ServingRuntime"], rendered[""]["InferenceService"])
    env = {e["name"]: e["value"] for e in container["env"]}
    unknown = [n for n in env if n.removeprefix("DIGITS_").lower() not in Settings.model_fields]
    assert not unknown, unknown
    settings = Settings(**{n.removeprefix("DIGITS_").lower(): v for n, v in env.items()}, model_root="/x")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["http"], ports["grpc"], ports["metrics"]) == (
        settings.http_port,
        settings.port,
        settings.metrics_port,
    )
    # Standard mode: Service port 80 goes to the first container port, which must be the HTTP one.
    assert container["ports"][0]["name"] == "http"


# --- the predictor as KServe runs it --------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two exported versions of a tiny model (the job's export code) and held-out synthetic digits."""
    import keras

    from jobs.export import export_model
    from tests.support.mnist import synthetic_arrays
    from tests.support.serving import build_model, metadata

    data = synthetic_arrays(2000, 100, seed=4)
    root = tmp_path_factory.mktemp("kserve-exported")
    first = build_model(seed=1)
    first.fit(data["train_images"].astype(np.float32), data["train_labels"], epochs=3, verbose=0)
    _, first_path = export_model(first, root / "a", metadata(val_accuracy=0.9))
    second = build_model(seed=2)  # untrained: answers differ from the first's
    _, second_path = export_model(second, root / "b", metadata(val_accuracy=0.1))
    images = data["test_images"][:40]
    predict = {
        "first": np.argmax(first.predict(images.astype(np.float32), verbose=0), axis=-1).tolist(),
        "second": np.argmax(second.predict(images.astype(np.float32), verbose=0), axis=-1).tolist(),
    }
    keras.backend.clear_session()
    return {
        "paths": {"first": first_path, "second": second_path},
        "images": images,
        "labels": data["test_labels"][:40],
        "predict": predict,
    }


@pytest.fixture
def predictor(rendered, tmp_path_factory) -> Iterator[tuple[Predictor, Path, dict]]:
    """The kserve-container of the Standard variant, started on an empty claim (no model yet)."""
    runtime, isvc = rendered[""]["ServingRuntime"], rendered[""]["InferenceService"]
    container = predictor_container(runtime, isvc)
    sub_path = PVC_URI.match(isvc["spec"]["predictor"]["model"]["storageUri"])["path"]
    workdir = tmp_path_factory.mktemp("predictor")
    claim = workdir / "claim"
    running = start_predictor(container, claim, sub_path, workdir)
    yield running, claim / sub_path, container
    running.stop()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _alive(p: Predictor) -> Callable[[], bool]:
    def check() -> bool:
        if p.process.poll() is not None:
            raise AssertionError(f"the predictor exited {p.process.returncode}: {p.log.read_text()[-3000:]}")
        return http_status(p.url(8080, "/v2/health/live")) == 200

    return check


def test_predictor_on_a_read_only_mount_answers_kserve_clients(predictor, models, tmp_path: Path) -> None:
    from tests.support.serving import publish_copy

    running, repository, container = predictor
    wait_for(_alive(running), timeout=120, what="the predictor to answer /v2/health/live")
    assert "ro" in mount_options(running.process.pid, running.mount)  # as KServe mounts the claim
    probe = container["readinessProbe"]["httpGet"]
    ready_url = running.url(probe["port"], probe["path"])
    # No model yet: KServe's default TCP probe would pass (the port is open), ours must not.
    socket.create_connection(("127.0.0.1", running.ports[container["ports"][0]["containerPort"]]), 5).close()
    assert http_status(ready_url) == 503
    time.sleep(1.5)
    assert http_status(ready_url) == 503

    publish_copy(models["paths"]["first"], repository)  # what the tune Job does on the claim
    wait_for(lambda: http_status(ready_url) == 200, timeout=60, what="readiness once version 1 is published")
    answers = sdk_answers(running.url(8080), running.target(8500), "mnist", models["images"], tmp_path)
    for protocol in ("rest", "grpc"):
        answer = answers[protocol]
        assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True), protocol
        assert answer["classes"] == models["predict"]["first"], protocol
    # KServe's REST client drops the response's model_version (InferResponse.from_bytes); gRPC keeps it.
    assert answers["grpc"]["model_version"] == "1"
    accuracy = np.mean(np.array(answers["rest"]["classes"]) == models["labels"])
    assert accuracy >= 0.8

    pid = running.process.pid
    publish_copy(models["paths"]["second"], repository)  # a new version appears under the subPath

    def serves_version_2() -> bool:
        return (
            sdk_answers(running.url(8080), running.target(8500), "mnist", models["images"][:2], tmp_path)[
                "grpc"
            ]["model_version"]
            == "2"
        )

    wait_for(serves_version_2, timeout=60, what="version 2 to be served", interval=1.0)
    answers = sdk_answers(running.url(8080), running.target(8500), "mnist", models["images"], tmp_path)
    assert answers["rest"]["classes"] == answers["grpc"]["classes"] == models["predict"]["second"]
    assert running.process.poll() is None and running.process.pid == pid  # never restarted


@pytest.mark.slow
def test_predictor_classifies_official_test_images(predictor, tmp_path: Path) -> None:
    """A model trained on the official training images (MNIST_DATA_DIR), served as KServe runs it:
    both KServe clients classify the 10,000 official test images."""
    import keras

    from jobs.data import load_mnist
    from jobs.export import export_model
    from tests.support.serving import build_model, metadata

    directory = os.environ.get("MNIST_DATA_DIR")
    assert directory, "set MNIST_DATA_DIR to the official MNIST files for the slow tests"
    mnist = load_mnist(Path(directory))
    model = build_model(seed=3)
    model.fit(mnist.x_train.astype(np.float32), mnist.y_train, epochs=2, batch_size=128, verbose=0)
    running, repository, container = predictor
    export_model(model, repository, metadata(val_accuracy=0.9))
    keras.backend.clear_session()
    probe = container["readinessProbe"]["httpGet"]
    wait_for(lambda: http_status(running.url(probe["port"], probe["path"])) == 200, timeout=120, what="ready")
    answers = sdk_answers(running.url(8080), running.target(8500), "mnist", mnist.x_test, tmp_path)
    for protocol in ("rest", "grpc"):
        accuracy = float(np.mean(np.array(answers[protocol]["classes"]) == mnist.y_test))
        assert accuracy >= 0.9, (protocol, accuracy)
