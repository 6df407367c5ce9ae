"""The pod specs users apply, played: ``pytest -m k8s`` runs ``k8s/`` (rendered by kustomize) with
``podman kube play``, failures included.

Needs root, ``scripts/setup.sh e2e`` (podman, the images' base) and ``MNIST_DATA_DIR`` (the official files).
The images are the e2e suite's (``tests.support.containers``). How a Job, a Deployment and a Pod become
what podman plays, and every change from a kubelet, is ``tests/support/kube.py``; each test prints the
changes it made. ``K8S_KEEP=1`` leaves a failing test's pods up. docs/deployment.md, "The manifests, played".
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import modelrepo
from jobs.errors import EXIT_DISTRIBUTED
from tests.support import REPO, wait_for
from tests.support.containers import (
    official_mnist,
    progress_to_terminal,
    timestamp,
)
from tests.support.containers import run as run_command
from tests.support.containers import say as _say
from tests.support.kube import (
    ACCURACY_TOLERANCE,
    DATA_IN_POD,
    TEST_ENV,
    Cluster,
    Deviations,
    declared_probes,
    find,
    job_outcome,
    play,
    played_cluster,
    pods_for,
    probe,
    render,
)

pytestmark = pytest.mark.k8s

JOB, DEPLOYMENT, CLAIM = "mnist-tune", "mnist-serve", "mnist-workspace"
SUBNET = "10.89.219.0/24"


def say(message: str) -> None:
    _say(message, "k8s")


@pytest.fixture(scope="module", autouse=True)
def _progress(pytestconfig: pytest.Config) -> None:
    progress_to_terminal(pytestconfig)


@pytest.fixture(scope="module")
def mnist() -> Path:
    return official_mnist("k8s")


@pytest.fixture(scope="module")
def manifests(k8s_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """``k8s/`` rendered by kustomize with the images pointed at the local builds."""
    return render(REPO / "k8s", k8s_images, tmp_path_factory.mktemp("kustomize"))


@pytest.fixture
def played(k8s_env: dict[str, str]) -> Iterator[Cluster]:
    # (4) nothing of it is left: every pod, container, claim volume and the network.
    with played_cluster("mnist-k8s", SUBNET, k8s_env, say) as c:
        yield c


def play_pods(c: Cluster, pods: list[dict], deviations: Deviations) -> None:
    for pod in pods:
        play(c, pod, deviations, say)


def tune_deviations(c: Cluster, pods: list[dict], mnist: Path, **env: str) -> Deviations:
    addresses = {pod["metadata"]["name"]: c.address(pod["metadata"]["name"]) for pod in pods}
    return Deviations(addresses=addresses, env={**TEST_ENV, **env}, host_paths={DATA_IN_POD: str(mnist)})


def exit_code(c: Cluster, pod: str, timeout: float) -> int:
    """Wait for the pod's ``tune`` container to exit; its exit code."""

    def exited() -> dict | None:
        state = c.container(pod, "tune")["State"]
        return state if state["Status"] == "exited" else None

    try:
        return wait_for(exited, timeout, f"{pod} to exit", interval=2)["ExitCode"]
    except AssertionError:
        pytest.fail(f"{pod} did not exit in {timeout:.0f} s\n{c.logs(pod, 'tune')}", pytrace=False)


def trial_records(workspace: Path) -> dict[str, dict]:
    """Keras Tuner's records on the volume: trial id -> trial.json."""
    records = {}
    for path in (workspace / "run" / "tuner").glob("trial_*/trial.json"):
        record = json.loads(path.read_text())
        records[record["trial_id"]] = record
    return records


def assert_ran_as_10001_read_only(c: Cluster, pod: str, container: str) -> None:
    inspected = c.container(pod, container)
    assert inspected["Config"]["User"] == "10001:10001", inspected["Config"]["User"]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True, f"{pod}: root filesystem writable"


def assert_one_export(workspace: Path, versions: list[int]) -> modelrepo.ModelMetadata:
    models = workspace / "run" / "models"
    assert modelrepo.list_versions(models, "mnist") == versions
    last = models / "mnist" / str(versions[-1])
    assert last.stat().st_uid == 10001, f"{last} owned by {last.stat().st_uid}"
    assert (workspace / "run" / "report").is_dir() and any((workspace / "run" / "report").iterdir())
    return modelrepo.read_metadata(last)


@pytest.mark.timeout(1800)
def test_a_worker_whose_chief_never_appears_exits_6_within_its_wait(
    played: Cluster, manifests: list[dict], mnist: Path
) -> None:
    job = find(manifests, "Job", JOB)
    played.claim(find(manifests, "PersistentVolumeClaim", CLAIM))
    everyone = pods_for(job, uid=str(uuid.uuid4()))
    wait = 20
    deviations = tune_deviations(played, everyone, mnist, TUNE_DISTRIBUTED__CONNECT_TIMEOUT_SECONDS=str(wait))
    worker = pods_for(job, uid=str(uuid.uuid4()), indexes=[1])
    play_pods(played, worker, deviations)  # pod 0 is never played
    code = exit_code(played, f"{JOB}-1", 300)
    state = played.container(f"{JOB}-1", "tune")["State"]
    log = played.logs(f"{JOB}-1", "tune")
    assert code == EXIT_DISTRIBUTED, f"worker exited {code}\n{log}"
    assert f"not reachable within {wait} s" in log, log
    assert job_outcome(job, {1: code}) == "replace [1]"  # retried, not FailJob
    # Bounded: the wait plus the worker's own start (TensorFlow import, data load) on two busy cores.
    ran_for = timestamp({"State": state}, "FinishedAt") - timestamp({"State": state}, "StartedAt")
    assert ran_for < wait + 90, f"the worker ran {ran_for:.0f} s for a {wait} s wait"
    say(f"worker without a chief exited {code} after {ran_for:.0f} s (connect wait {wait} s)")


@pytest.mark.timeout(3600)
def test_tune_job_runs_as_its_indexed_pods_then_the_deployment_serves_it(
    played: Cluster, manifests: list[dict], mnist: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    job, deployment = find(manifests, "Job", JOB), find(manifests, "Deployment", DEPLOYMENT)
    workspace = played.claim(find(manifests, "PersistentVolumeClaim", CLAIM))

    # (3, first half) The serving pod starts with the Job (kubectl apply -k): not ready before an export.
    serve_pod = pods_for(deployment, replicas=1)[0]
    say(f"deviation: {DEPLOYMENT}: 1 replica played of {deployment['spec']['replicas']} (two cores)")
    serve_name = serve_pod["metadata"]["name"]
    serve_container = serve_pod["spec"]["containers"][0]
    played.address(serve_name)
    play_pods(played, [serve_pod], Deviations())
    probes = declared_probes(serve_container)
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}, sorted(probes)
    startup = probes["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    wait_for(
        lambda: probe(played, serve_name, serve_container, startup), budget, "the startup probe", interval=2
    )
    for _ in range(probes["readinessProbe"].get("failureThreshold", 3) + 1):
        assert not probe(played, serve_name, serve_container, probes["readinessProbe"]), (
            "ready without a model"
        )
        assert probe(played, serve_name, serve_container, probes["livenessProbe"])
        time.sleep(probes["readinessProbe"].get("periodSeconds", 10) / 5)
    say("serve: startup and liveness probes pass, readiness fails: no model yet")

    # (1) The Job's pods as the Indexed Job controller creates them.
    uid = str(uuid.uuid4())
    pods = pods_for(job, uid=uid)
    assert [p["metadata"]["name"] for p in pods] == [f"{JOB}-{i}" for i in range(job["spec"]["completions"])]
    play_pods(played, pods, tune_deviations(played, pods, mnist))
    codes = {i: exit_code(played, f"{JOB}-{i}", 1500) for i in range(len(pods))}
    logs = {i: played.logs(f"{JOB}-{i}", "tune") for i in codes}
    assert codes == {0: 0, 1: 0, 2: 0}, f"exit codes {codes}\n" + "\n".join(logs.values())
    assert job_outcome(job, codes) == "Complete"
    records = trial_records(workspace)
    assert records and all(r["status"] == "COMPLETED" for r in records.values()), records
    tuner_dir = workspace / "run" / "tuner"
    # Keras Tuner's worker writes its tuner state (`tuner<i>.json`) only when it ends a trial.
    ran = sorted(p.stem for p in tuner_dir.glob("tuner*.json"))
    assert ran == ["tuner1", "tuner2"], f"workers that ended a trial: {ran}"
    done = json.loads((tuner_dir / "search_done.json").read_text())
    assert done["run_id"] == uid and done["finalized"] is True, done  # the fieldRef on the controller's label
    metadata = assert_one_export(workspace, [1])
    for i in codes:
        assert_ran_as_10001_read_only(played, f"{JOB}-{i}", "tune")
    say(f"tune job: exit codes {codes}, {len(records)} trials, both workers ran trials ({ran})")

    # (3) The Deployment's pod loads it: readiness now passes, Predict and v2 infer from the host.
    wait_for(
        lambda: probe(played, serve_name, serve_container, probes["readinessProbe"]),
        120,
        "the readiness probe once a model is exported",
        interval=probes["readinessProbe"].get("periodSeconds", 10),
    )
    for kind in probes:
        assert probe(played, serve_name, serve_container, probes[kind]), kind
    assert_ran_as_10001_read_only(played, serve_name, "serve")
    container = f"{serve_name}-serve"
    assert run_command(["podman", "exec", container, "id", "-u"], env=played.env).stdout.strip() == "10001"
    for path in ("/workspace/run/x", "/opt/x"):  # the model volume read-only as written; the root too
        touched = run_command(["podman", "exec", container, "touch", path], env=played.env, check=False)
        assert touched.returncode != 0 and "Read-only file system" in touched.stderr, (path, touched.stderr)
    ip = played.addresses[serve_name]
    before = played.container(serve_name, "serve")
    result = classify(ip, mnist)
    assert result["version"] == 1 and result["images"] == 10_000, result
    assert abs(result["accuracy"] - metadata.test_accuracy) <= ACCURACY_TOLERANCE, (result, metadata)
    v2 = v2_accuracy(ip, mnist)
    assert abs(v2 - metadata.test_accuracy) <= ACCURACY_TOLERANCE, (v2, metadata.test_accuracy)
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert re.search(r'^digits_model_loaded_version\{model="mnist"\} 1\.0$', metrics, re.M), metrics[:2000]
    say(
        f"serve: Predict {result['accuracy']:.4f}, v2 infer {v2:.4f} on 10,000 official images "
        f"(recorded {metadata.test_accuracy:.4f}); /metrics answers"
    )

    # (3, end) A second export by a one-off tune pod, served without a restart.
    retrain = dict(job, metadata={**job["metadata"], "name": f"{JOB}-retrain"})
    retrain["spec"] = {**job["spec"], "completionMode": "NonIndexed", "completions": 1, "parallelism": 1}
    one_off = pods_for(retrain, uid=str(uuid.uuid4()))
    play_pods(
        played,
        one_off,
        Deviations(env={**TEST_ENV, "TUNE_EXPORT_AGAIN": "1"}, host_paths={DATA_IN_POD: str(mnist)}),
    )
    one_off_name = one_off[0]["metadata"]["name"]
    assert exit_code(played, one_off_name, 900) == 0, played.logs(one_off_name, "tune")
    second = assert_one_export(workspace, [1, 2])
    wait_for(
        lambda: loaded_version(ip) == 2,
        120,
        "serve to load version 2",
        interval=2,
    )
    result = classify(ip, mnist)
    assert result["version"] == 2 and abs(result["accuracy"] - second.test_accuracy) <= ACCURACY_TOLERANCE
    after = played.container(serve_name, "serve")
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"], "serve was restarted"
    assert after.get("RestartCount", 0) == before.get("RestartCount", 0), "serve was restarted"
    say(f"one-off pod exported version 2, served without a restart ({time.monotonic() - t0:.0f} s in all)")


@pytest.mark.timeout(3600)
def test_a_chief_killed_mid_search_is_replaced_and_the_search_exports_once(
    played: Cluster, manifests: list[dict], mnist: Path
) -> None:
    job = find(manifests, "Job", JOB)
    workspace = played.claim(find(manifests, "PersistentVolumeClaim", CLAIM))
    uid = str(uuid.uuid4())
    pods = pods_for(job, uid=uid)
    # Six trials instead of smoke's three: the search must still be running when the chief is killed.
    deviations = tune_deviations(played, pods, mnist, TUNE_TUNER__MAX_TRIALS="6")
    play_pods(played, pods, deviations)

    def completed() -> dict[str, dict]:
        return {k: r for k, r in trial_records(workspace).items() if r["status"] == "COMPLETED"}

    wait_for(completed, 900, "a first completed trial on the volume", interval=0.5)
    finished_before = completed()
    assert not (workspace / "run" / "tuner" / "search_done.json").exists(), "search over before the kill"
    played.kill(f"{JOB}-0", "tune")
    killed = exit_code(played, f"{JOB}-0", 60)
    assert job_outcome(job, {0: killed}) == "replace [0]", killed  # counted against backoffLimit, replaced
    say(f"chief killed (exit {killed}) after {len(finished_before)} completed trial(s); replacing index 0")
    # podReplacementPolicy: Failed: the replacement starts once the old pod is gone; same index, same Job.
    played.down(f"{JOB}-0")
    play_pods(played, pods_for(job, uid=uid, indexes=[0]), deviations)
    codes = {i: exit_code(played, f"{JOB}-{i}", 1500) for i in range(3)}
    assert codes == {0: 0, 1: 0, 2: 0}, f"{codes}\n{played.logs(f'{JOB}-0', 'tune')}"
    assert job_outcome(job, codes) == "Complete"
    records = trial_records(workspace)
    assert len(records) == 6 and all(r["status"] == "COMPLETED" for r in records.values()), records
    for trial_id, record in finished_before.items():  # no finished trial lost or run again
        assert records[trial_id]["score"] == record["score"], (trial_id, record, records[trial_id])
    assert "Reloading Tuner" in played.logs(f"{JOB}-0", "tune", tail=400)
    assert_one_export(workspace, [1])
    say(f"replacement chief finished the search: {len(records)} trials, one export")


# --- clients from the host ------------------------------------------------------------------------------


def classify(ip: str, mnist: Path) -> dict:
    """``serving.client`` (Predict) from the host on the 10,000 official test images."""
    result = run_command(
        [
            sys.executable,
            "-m",
            "serving.client",
            "--target",
            f"{ip}:8500",
            "--idx",
            str(mnist / "t10k-images-idx3-ubyte.gz"),
            "--labels",
            str(mnist / "t10k-labels-idx1-ubyte.gz"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )
    summary = re.search(r"^# (\d+) images classified by (\S+) version (\d+)$", result.stdout, re.M)
    accuracy = re.search(r"^# accuracy ([0-9.]+) \((\d+)/(\d+)\)$", result.stdout, re.M)
    assert summary and accuracy, result.stdout[-2000:]
    return {
        "images": int(summary.group(1)),
        "version": int(summary.group(3)),
        "accuracy": float(accuracy.group(1)),
    }


def v2_accuracy(ip: str, mnist: Path, batch: int = 1000) -> float:
    """Open Inference Protocol v2 REST infer (``/v2/models/mnist/infer``) on the 10,000 test images
    (batches within the server's default ``max_images_per_request``, 1024)."""
    from serving.client import read_idx

    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    right = 0
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        body = {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [len(chunk), 784],
                    "data": chunk.reshape(-1).tolist(),
                }
            ]
        }
        request = urllib.request.Request(
            f"http://{ip}:8080/v2/models/mnist/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.load(response)
        outputs = {o["name"]: o for o in reply["outputs"]}
        classes = np.asarray(outputs["classes"]["data"])
        right += int((classes == labels[start : start + batch]).sum())
    return right / len(images)


def loaded_version(ip: str) -> int | None:
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^digits_model_loaded_version\{model="mnist"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else None
