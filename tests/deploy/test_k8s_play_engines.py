"""The KServe and Katib pods, played: ``pytest -m k8s`` runs the Pod KServe's controller would make from
``k8s/kserve`` (``kserve_predictor_pod``) with ``podman kube play``, on a claim a played tune pod fills;
and two Katib trial pods of ``k8s/katib`` (``katib_trial_pod``), the promote Job's pod, then the predictor.

Same needs and harness as ``tests/deploy/test_k8s_play.py`` (root, ``scripts/setup.sh e2e``,
``MNIST_DATA_DIR``, the e2e suite's images, ``tests/support/kube.py``), plus ``.venv-kserve`` (KServe's own
SDK clients, requirements-kserve.txt). docs/deployment.md, "KServe and Katib: what ran here".
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

import modelrepo
from tests.support import REPO, wait_for
from tests.support.containers import (
    official_mnist,
    progress_to_terminal,
)
from tests.support.containers import run as run_command
from tests.support.containers import say as _say
from tests.support.katib_tools import METRICS_FILE, katib_trial_pod, parse_metrics
from tests.support.kserve_tools import CONTAINER, MOUNT_PATH, kserve_predictor_pod, sdk_answers
from tests.support.kube import (
    ACCURACY_TOLERANCE,
    DATA_IN_POD,
    TEST_ENV,
    Cluster,
    Deviations,
    declared_probes,
    find,
    play,
    played_cluster,
    pods_for,
    probe,
    render,
)

pytestmark = pytest.mark.k8s

JOB, CLAIM, ISVC = "mnist-tune", "mnist-workspace", "mnist"
SUBNET = "10.89.223.0/24"  # not test_k8s_play's: the two modules' networks never meet


def say(message: str) -> None:
    _say(message, "k8s")


@pytest.fixture(scope="module", autouse=True)
def _progress(pytestconfig: pytest.Config) -> None:
    progress_to_terminal(pytestconfig)


@pytest.fixture(scope="module")
def mnist() -> Path:
    return official_mnist("k8s")


@pytest.fixture
def played(k8s_env: dict[str, str]) -> Iterator[Cluster]:
    with played_cluster("mnist-k8s-engines", SUBNET, k8s_env, say) as c:
        yield c


def exited(c: Cluster, pod: str, container: str, timeout: float) -> int:
    def state() -> dict | None:
        found = c.container(pod, container)["State"]
        return found if found["Status"] == "exited" else None

    try:
        return wait_for(state, timeout, f"{pod} to exit", interval=2)["ExitCode"]
    except AssertionError:
        pytest.fail(f"{pod} did not exit in {timeout:.0f} s\n{c.logs(pod, container)}", pytrace=False)


@pytest.mark.timeout(1800)
def test_kserve_predictor_pod_answers_kserves_sdk_clients(
    played: Cluster, k8s_images: dict[str, str], mnist: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    kserve = render(REPO / "k8s" / "kserve", {"mnist-serve": k8s_images["mnist-serve"]}, tmp_path / "kserve")
    tune = render(REPO / "k8s", k8s_images, tmp_path / "k8s")
    pod = kserve_predictor_pod(kserve)
    name = pod["metadata"]["name"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == CONTAINER
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == MOUNT_PATH]
    assert (mount["subPath"], mount["readOnly"]) == ("run/models", True), mount

    workspace = played.claim(find(tune, "PersistentVolumeClaim", CLAIM))
    job = find(tune, "Job", JOB)
    # podman needs the subPath to exist (a kubelet creates it): the tune Job's output folders, owned by
    # the tune pods' user as a tune run leaves them. podman chowns a volume to the user of the first
    # container mounting it whole, not through a subPath: the claim's root is given to the tune pods'
    # user here, as their fsGroup makes it writable on a cluster.
    security = job["spec"]["template"]["spec"]["securityContext"]
    owner = (security["runAsUser"], security["runAsGroup"])
    os.chown(workspace, *owner)
    for folder in (workspace / "run", workspace / "run" / "models"):
        folder.mkdir()
        os.chown(folder, *owner)
    say(f"test step: claim root, run/ and run/models/ owned by {owner} (the subPath must exist)")

    # The predictor first (kubectl apply -k k8s/kserve next to the tune Job): no model yet.
    played.address(name)
    play(played, pod, Deviations(claims={CLAIM: str(workspace)}), say)
    probes = declared_probes(container)
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}, sorted(probes)
    startup, readiness = probes["startupProbe"], probes["readinessProbe"]
    assert readiness["httpGet"]["path"] == f"/v2/models/{ISVC}/ready"  # {{.Name}} filled in
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    wait_for(lambda: probe(played, name, container, startup), budget, "the startup probe", interval=2)
    for _ in range(readiness.get("failureThreshold", 3) + 1):
        assert not probe(played, name, container, readiness), "ready without a model"
        time.sleep(readiness.get("periodSeconds", 10) / 5)
    # The TCP probe KServe would add without ours passes already (kserve#3113): ours is what gates.
    assert probe(played, name, container, {"tcpSocket": {"port": container["ports"][0]["containerPort"]}})
    say("predictor: startup probe passes, readiness fails, a TCP probe would pass: no model yet")

    # A model on the claim: the tune Job's pod template as one NonIndexed pod (standalone search, smoke).
    one = dict(job, metadata={**job["metadata"], "name": f"{JOB}-once"})
    one["spec"] = {**job["spec"], "completionMode": "NonIndexed", "completions": 1, "parallelism": 1}
    (tune_pod,) = pods_for(one, uid=str(uuid.uuid4()))
    play(played, tune_pod, Deviations(env=TEST_ENV, host_paths={DATA_IN_POD: str(mnist)}), say)
    tune_name = tune_pod["metadata"]["name"]
    assert exited(played, tune_name, "tune", 900) == 0, played.logs(tune_name, "tune")
    models = workspace / "run" / "models"
    assert modelrepo.list_versions(models, ISVC) == [1]
    metadata = modelrepo.read_metadata(models / ISVC / "1")
    say(f"tune pod exported version 1 (test accuracy {metadata.test_accuracy:.4f})")

    wait_for(
        lambda: probe(played, name, container, readiness),
        120,
        "the readiness probe once the model is on the claim",
        interval=readiness.get("periodSeconds", 10),
    )
    for kind, spec in probes.items():
        assert probe(played, name, container, spec), kind
    inspected = played.container(name, CONTAINER)
    assert inspected["Config"]["User"] == "10001:10001" and inspected["HostConfig"]["ReadonlyRootfs"]
    touched = run_command(
        ["podman", "exec", f"{name}-{CONTAINER}", "touch", f"{MOUNT_PATH}/x"], env=played.env, check=False
    )
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched.stderr
    listed = run_command(
        ["podman", "exec", f"{name}-{CONTAINER}", "ls", f"{MOUNT_PATH}/{ISVC}"], env=played.env
    )
    assert listed.stdout.split() == ["1"], listed.stdout  # the subPath, not the claim's root

    # KServe's own SDK clients (REST v2 and gRPC) from the host, at the pod's address.
    from serving.client import read_idx

    test_images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    ip = played.addresses[name]
    answers = sdk_answers(f"http://{ip}:8080", f"{ip}:8500", ISVC, test_images, tmp_path)
    for protocol in ("rest", "grpc"):
        answer = answers[protocol]
        assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True), protocol
        accuracy = float(np.mean(np.asarray(answer["classes"]) == labels))
        assert abs(accuracy - metadata.test_accuracy) <= ACCURACY_TOLERANCE, (protocol, accuracy, metadata)
        say(f"KServe {protocol} client: {accuracy:.4f} on 10,000 official test images")
    assert answers["grpc"]["model_version"] == "1"
    say(f"recorded {metadata.test_accuracy:.4f}; {time.monotonic() - t0:.0f} s in all")


def official_test_set(mnist: Path) -> tuple[np.ndarray, np.ndarray]:
    from serving.client import read_idx

    return read_idx(mnist / "t10k-images-idx3-ubyte.gz"), read_idx(mnist / "t10k-labels-idx1-ubyte.gz")


@pytest.mark.timeout(1800)
def test_katib_trial_pods_then_promotion_then_the_predictor_serves_the_best(
    played: Cluster, k8s_images: dict[str, str], mnist: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    (experiment,) = render(REPO / "k8s" / "katib", k8s_images, tmp_path / "katib")
    tune = render(REPO / "k8s", k8s_images, tmp_path / "k8s")
    workspace = played.claim(find(tune, "PersistentVolumeClaim", CLAIM))
    # Two of the trials a Suggestion could assign (seed's space), one learning fast and one slowly.
    base = {"num_layers": "2", "units_1": "32", "units_2": "32", "units_3": "32", "units_4": "32"}
    trials = {
        "mnist-seed-good0001": {**base, "units_0": "128", "learning_rate": "0.005", "batch_size": "128"},
        "mnist-seed-poor0002": {**base, "units_0": "32", "learning_rate": "0.0001", "batch_size": "128"},
    }
    # The test's choices: the official files from a host folder, 2 epochs per trial instead of seed's 10.
    trial_env = {"MNIST_DATA_DIR": DATA_IN_POD, "TUNE_SEARCH__EPOCHS": "2"}
    deviations = Deviations(env=trial_env, host_paths={DATA_IN_POD: str(mnist)})
    best = {}
    for trial, assignment in trials.items():
        pod = katib_trial_pod(experiment, assignment, trial, uid=str(uuid.uuid4()))
        name = pod["metadata"]["name"]
        play(played, pod, deviations, say)
        code = exited(played, name, "trial", 600)
        # The collector's folder (the emptyDir), read from the exited container in the sidecar's place.
        logs = tmp_path / trial
        logs.mkdir()  # podman 4.3's cp puts a folder's files into an existing target folder
        played.podman("cp", f"{name}-trial:{METRICS_FILE.rsplit('/', 1)[0]}", str(logs))
        assert code == 0, (logs / "metrics.log").read_text()[-3000:]
        marks = [p for p in logs.iterdir() if p.suffix == ".pid"]
        assert len(marks) == 1 and marks[0].stem.isdigit(), sorted(p.name for p in logs.iterdir())
        assert marks[0].read_text().strip() == "completed"
        found = parse_metrics((logs / "metrics.log").read_text(), ["val_accuracy", "val_loss"])
        record = json.loads((workspace / "katib" / "mnist-seed" / trial / "trial.json").read_text())
        history = record["history"]
        assert [v for n, v, _ in found if n == "val_accuracy"] == pytest.approx(
            history["val_accuracy"], abs=1e-4
        )
        assert [v for n, v, _ in found if n == "val_loss"] == pytest.approx(history["val_loss"], abs=1e-4)
        assert len(history["val_accuracy"]) == 2  # one objective value per epoch
        best[trial] = max(v for n, v, _ in found if n == "val_accuracy")  # metricStrategies: max
        say(f"katib trial {trial}: val_accuracy per epoch {history['val_accuracy']} from metrics.log")
    winner = max(best, key=best.get)

    # k8s/katib/promote-job.yaml (kubectl create -f): its image pointed at the local build, as render does.
    promote = yaml.safe_load((REPO / "k8s" / "katib" / "promote-job.yaml").read_text())
    for container in promote["spec"]["template"]["spec"]["containers"]:
        container["image"] = k8s_images["mnist-tune"]
    image = k8s_images["mnist-tune"]
    say(f"test step: {promote['metadata']['name']} image set to {image} (kubectl create -f)")
    (promote_pod,) = pods_for(promote, uid=str(uuid.uuid4()))
    play(
        played,
        promote_pod,
        Deviations(env={"MNIST_DATA_DIR": DATA_IN_POD}, host_paths={DATA_IN_POD: str(mnist)}),
        say,
    )
    promote_name = promote_pod["metadata"]["name"]
    assert exited(played, promote_name, "promote", 600) == 0, played.logs(promote_name, "promote")
    models = workspace / "run" / "models"
    assert modelrepo.list_versions(models, ISVC) == [1]
    metadata = modelrepo.read_metadata(models / ISVC / "1")
    assert winner in metadata.final_model_note, (winner, metadata.final_model_note)
    say(f"promoted {winner} as version 1 (test accuracy {metadata.test_accuracy:.4f})")

    # The KServe predictor on the same claim serves it.
    kserve = render(REPO / "k8s" / "kserve", {"mnist-serve": k8s_images["mnist-serve"]}, tmp_path / "kserve")
    pod = kserve_predictor_pod(kserve)
    name = pod["metadata"]["name"]
    (container,) = pod["spec"]["containers"]
    played.address(name)
    play(played, pod, Deviations(claims={CLAIM: str(workspace)}), say)
    readiness = container["readinessProbe"]
    wait_for(lambda: probe(played, name, container, readiness), 180, "the predictor's readiness", interval=2)
    test_images, labels = official_test_set(mnist)
    ip = played.addresses[name]
    answers = sdk_answers(f"http://{ip}:8080", f"{ip}:8500", ISVC, test_images, tmp_path)
    for protocol in ("rest", "grpc"):
        accuracy = float(np.mean(np.asarray(answers[protocol]["classes"]) == labels))
        assert abs(accuracy - metadata.test_accuracy) <= ACCURACY_TOLERANCE, (protocol, accuracy, metadata)
    say(
        f"KServe clients: {accuracy:.4f} on 10,000 official test images; {time.monotonic() - t0:.0f} s in all"
    )
