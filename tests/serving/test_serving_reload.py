"""Model swaps under load (bad versions skipped) and graceful SIGTERM, with zero failed requests."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tensorflow import make_tensor_proto as tf_tensor_proto
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import modelrepo
from digits.v1 import digits_pb2, digits_pb2_grpc
from tests.support import REPO, free_port, wait_for
from tests.support.serving import publish_copy, publish_tf_module, wait_serving, wrong_signature_fn


class Load:
    """Closed-loop clients in threads, recording (status, version) of every answer."""

    def __init__(self, target: str, clients: int = 4, images: int = 1) -> None:
        self.results: Counter = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._request = digits_pb2.PredictRequest(uint8_pixels=bytes(784 * images))
        self._channel = grpc.insecure_channel(target)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        stub = digits_pb2_grpc.DigitClassifierStub(self._channel)
        backoff = 0.0
        while not self._stop.is_set():
            try:
                key = ("OK", stub.Predict(self._request, timeout=30).model_version)
            except grpc.RpcError as exc:
                key = (exc.code().name, None)
            with self._lock:
                self.results[key] += 1
            # Back off after a refusal, as gRPC's retry policy does: the server closes its port once
            # the clients it refused went quiet (shutdown_quiet_seconds).
            backoff = 0.0 if key[0] == "OK" else min(2 * backoff or 0.05, 1.0)
            time.sleep(backoff * random.uniform(0.5, 1.5))  # jittered, as gRPC's retry backoff

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._channel.close()
        return self.results


def _publish_raw(root: Path, version: int, fill) -> Path:
    """Make a version directory by hand (atomically: staging dir + rename), bypassing publish()."""
    staging = root / "mnist" / f"{modelrepo.STAGING_PREFIX}manual{version}"
    staging.mkdir(parents=True)
    fill(staging)
    target = root / "mnist" / str(version)
    os.rename(staging, target)
    return target


def test_hot_reload_under_load_skips_bad_versions(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)  # version 1
    server = start_server(model_root=root, poll_interval_seconds=0.1)
    wait_serving(server.target)
    registry = server.server.metrics.registry

    def loads(outcome: str) -> float:
        return (
            registry.get_sample_value("digits_model_loads_total", {"model": "mnist", "outcome": outcome}) or 0
        )

    def loaded_version() -> float:
        return registry.get_sample_value("digits_model_loaded_version", {"model": "mnist"})

    load = Load(server.target, clients=4)
    try:
        time.sleep(0.3)
        # 2: corrupt saved_model.pb (published atomically, as the job would)
        modelrepo.publish(
            root,
            modelrepo.read_metadata(exported["random"]),
            lambda staging: (staging / modelrepo.SAVED_MODEL_FILE).write_bytes(b"\x08garbage" * 100),
        )
        # 3: a valid SavedModel with the wrong signature
        publish_tf_module(root, wrong_signature_fn())

        # 4: a good SavedModel whose metadata.json fails the schema
        def bad_metadata(staging: Path) -> None:
            shutil.copytree(exported["random"], staging, dirs_exist_ok=True)
            (staging / modelrepo.METADATA_FILE).write_text('{"model_name": "mnist", "tuner": 3}')

        _publish_raw(root, 4, bad_metadata)
        wait_for(lambda: loads("failure") == 3, what="three failed loads")
        assert loaded_version() == 1
        # 5: half-written by a careless copier (no saved_model.pb yet), completed a moment later
        half = _publish_raw(
            root, 5, lambda staging: shutil.copy(exported["trained"] / "metadata.json", staging)
        )
        wait_for(lambda: loads("failure") == 4, what="the half-written version to fail")
        time.sleep(0.5)  # several polls: failed versions whose files did not change are not retried
        assert loads("failure") == 4 and loaded_version() == 1
        for entry in exported["trained"].iterdir():
            if entry.is_dir():
                shutil.copytree(entry, half / entry.name)
            elif entry.name != modelrepo.METADATA_FILE:
                shutil.copy(entry, half / entry.name)
        wait_for(lambda: loaded_version() == 5, what="version 5 to load")
        time.sleep(0.5)  # keep the load running on the new version
    finally:
        results = load.stop()
    # >= 4: a poll may catch version 5 while its files are still being copied (a failure, retried later)
    assert loads("success") == 2 and loads("failure") >= 4
    failures = {key: count for key, count in results.items() if key[0] != "OK"}
    assert not failures, failures
    versions = {version for _, version in results}
    assert versions == {1, 5}, results
    assert results[("OK", 5)] > 0 and results[("OK", 1)] > 0


def _metric(port: int, name: str) -> float | None:
    """The sum of every sample of ``name`` (all label values), None if there is none."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return sum(values) if values else None


@pytest.mark.timeout(240)
def test_sigterm_finishes_inflight_requests(exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DIGITS_METRICS_PORT": str(metrics_port)}
    # A 30 s batching delay holds every request in the queue until SIGTERM drains it.
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-root", str(root), "--host", "127.0.0.1",
         "--port", str(port), "--http-port", "0", "--metrics-host", "127.0.0.1",
         "--max-queue-delay-us", "30000000",
         "--max-batch-size", "1024", "--grace-seconds", "20"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{port}"
        wait_for(lambda: process.poll() is None and _serving(target), timeout=120, what="the server")
        channel = grpc.insecure_channel(target)
        stub = digits_pb2_grpc.DigitClassifierStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        load = Load(target, clients=2)
        held = [
            stub.Predict.future(digits_pb2.PredictRequest(uint8_pixels=bytes(784 * n))) for n in range(1, 9)
        ]
        wait_for(
            # 8 held requests + one blocked request per load client
            lambda: (_metric(metrics_port, "digits_inflight_requests") or 0) >= 10,
            what="in-flight requests",
        )
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        answers = [future.result(timeout=30) for future in held]  # raises if any failed
        assert [len(answer.digits) for answer in answers] == list(range(1, 9))
        assert time.monotonic() - signalled < 15  # drained at once, not after the 30 s batching delay
        assert process.wait(timeout=30) == 0
        results = load.stop()
        channel.close()
        assert results[("OK", 1)] > 0
        # A call sent after the signal that meets the gRPC core's shutdown GOAWAY in flight (one round
        # trip) is CANCELLED by the core, never by us: rare, bounded (docs/serving.md, Operations).
        assert results[("CANCELLED", None)] <= 1, results
        assert set(results) <= {("OK", 1), ("UNAVAILABLE", None), ("CANCELLED", None)}, results
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=30)[0]
    assert "server stopped" in output


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


class MixedLoad:
    """Closed-loop TF Serving gRPC and v2 REST clients recording (start, end, protocol, outcome)."""

    def __init__(self, target: str, http_port: int, grpc_clients: int, http_clients: int) -> None:
        self.records: list[tuple[float, float, str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._target, self._http_port = target, http_port
        image = np.zeros((1, 28, 28), np.float32)
        self._tfs = predict_pb2.PredictRequest()
        self._tfs.model_spec.name = "mnist"
        self._tfs.inputs["images"].CopyFrom(tf_tensor_proto(image))
        body = {
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28], "data": image.tolist()}]
        }
        self._body = json.dumps(body).encode()
        self._threads = [threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_clients)]
        self._threads += [threading.Thread(target=self._http, daemon=True) for _ in range(http_clients)]
        for thread in self._threads:
            thread.start()

    def _record(self, started: float, protocol: str, outcome: str) -> None:
        with self._lock:
            self.records.append((started, time.monotonic(), protocol, outcome))

    def _grpc(self) -> None:
        with grpc.insecure_channel(self._target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            backoff = 0.0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    stub.Predict(self._tfs, timeout=30)
                    outcome = "OK"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                self._record(started, "grpc", outcome)
                backoff = 0.0 if outcome == "OK" else min(2 * backoff or 0.05, 1.0)
                time.sleep(backoff * random.uniform(0.5, 1.5))  # jittered, as gRPC's retry policy

    def _http(self) -> None:
        connection, backoff = None, 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self._http_port, timeout=30)
                connection.request(
                    "POST", "/v2/models/mnist/infer", self._body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                outcome = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                outcome = (
                    "refused" if isinstance(exc, ConnectionRefusedError) else f"closed:{type(exc).__name__}"
                )
                connection = None
            self._record(started, "http", outcome)
            backoff = 0.0 if outcome == "200" else min(2 * backoff or 0.05, 1.0)
            time.sleep(backoff * random.uniform(0.5, 1.5))

    def stop(self) -> list[tuple[float, float, str, str]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.records


def test_sigterm_under_mixed_load_cancels_nothing_it_received(exported, tmp_path):
    """Requests received before SIGTERM finish OK; later ones get UNAVAILABLE / 503 or find the port shut."""
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-root", str(root), "--host", "127.0.0.1",
         "--port", str(port), "--http-port", str(http_port), "--metrics-host", "127.0.0.1",
         "--metrics-port", str(metrics_port), "--grace-seconds", "10"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{port}"
        wait_for(lambda: process.poll() is None and _serving(target), timeout=120, what="the server")
        load = MixedLoad(target, http_port, grpc_clients=12, http_clients=6)
        time.sleep(3)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        time.sleep(0.2)
        records = load.stop()
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=30)[0]
    before = Counter((p, o) for started, _, p, o in records if started < signalled)
    after = Counter((p, o) for started, _, p, o in records if started >= signalled)
    assert before[("grpc", "OK")] > 100 and before[("http", "200")] > 50, before
    # Sent well before the signal: received, so answered OK.
    early = Counter((p, o) for started, _, p, o in records if started < signalled - 0.25)
    assert set(early) <= {("grpc", "OK"), ("http", "200")}, early
    allowed = {("grpc", "OK"), ("grpc", "UNAVAILABLE"), ("http", "200"), ("http", "503"), ("http", "refused")}
    assert set(before) <= allowed, before
    # Sent after the signal: UNAVAILABLE / 503 / refused, except a call that meets the gRPC core's
    # shutdown GOAWAY in flight (one round trip), which the core CANCELs: rare, bounded.
    assert after[("grpc", "CANCELLED")] <= 1, after
    assert set(after) <= allowed | {("grpc", "CANCELLED")}, after
    assert "server stopped" in output and "Traceback" not in output, output[-3000:]
