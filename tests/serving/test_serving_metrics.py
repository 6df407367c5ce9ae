"""/metrics content (parsed with prometheus_client's parser) and a real Prometheus scraping the service."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from digits.v1 import digits_pb2, digits_pb2_grpc
from tests.support import free_port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_after_traffic(served):
    stub = digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(served.target))
    stub.Predict(digits_pb2.PredictRequest(uint8_pixels=bytes(784 * 5)), timeout=30)
    stub.Predict(digits_pb2.PredictRequest(uint8_pixels=bytes(784 * 3)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Predict(digits_pb2.PredictRequest(uint8_pixels=bytes(10)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Predict(digits_pb2.PredictRequest(model_name="other", uint8_pixels=bytes(784)), timeout=30)
    samples = scrape(served.metrics_port)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    grpc_ = {"protocol": "grpc"}
    assert value("digits_requests_total", method="Predict", code="OK", **grpc_) == 2
    assert value("digits_requests_total", method="Predict", code="INVALID_ARGUMENT", **grpc_) == 1
    assert value("digits_requests_total", method="Predict", code="NOT_FOUND", **grpc_) == 1
    assert value("digits_request_duration_seconds_count", method="Predict", **grpc_) == 4
    assert value("digits_request_duration_seconds_bucket", method="Predict", le="0.0001", **grpc_) is not None
    assert value("digits_request_duration_seconds_bucket", method="Predict", le="+Inf", **grpc_) == 4
    assert value("digits_images_classified_total") == 8
    assert value("digits_batch_size_count") == 2 and value("digits_batch_size_sum") == 8
    assert value("digits_queue_wait_seconds_count") == 2
    assert value("digits_model_execution_seconds_count") == 2
    assert value("digits_inflight_requests", protocol="grpc") == 0
    assert value("digits_inflight_requests", protocol="http") == 0
    assert value("digits_model_loaded_version", model="mnist") == 1
    assert value("digits_model_loads_total", model="mnist", outcome="success") == 1
    predicted = sum(value("digits_predicted_class_total", digit=str(d)) or 0 for d in range(10))
    assert predicted == 8


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def _poll(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("Prometheus did not report the expected data")
        time.sleep(0.25)


@pytest.mark.timeout(180)
def test_real_prometheus_scrapes_the_service(served, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is required (Debian package prometheus; scripts/setup.sh dev)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: digits\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{served.metrics_port}']\n"
    )
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        stub = digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(served.target))
        images = np.zeros((4, 28, 28), np.uint8).tobytes()
        for _ in range(5):
            stub.Predict(digits_pb2.PredictRequest(uint8_pixels=images), timeout=30)

        def target_up():
            try:
                targets = _api(port, "targets")["data"]["activeTargets"]
            except OSError:
                return None
            return targets and targets[0]["health"] == "up"

        _poll(target_up)
        counter = _poll(
            lambda: _api(port, "query", query='digits_requests_total{method="Predict",code="OK"}')["data"][
                "result"
            ]
        )
        assert float(counter[0]["value"][1]) == 5
        buckets = _poll(
            lambda: _api(port, "query", query='digits_request_duration_seconds_bucket{method="Predict"}')[
                "data"
            ]["result"]
        )
        bounds = {series["metric"]["le"]: float(series["value"][1]) for series in buckets}
        assert bounds["+Inf"] == 5 and "0.0001" in bounds
        quantile = _api(
            port,
            "query",
            query="histogram_quantile(0.99, sum by (le) (digits_request_duration_seconds_bucket))",
        )["data"]["result"]
        assert quantile and float(quantile[0]["value"][1]) > 0
    finally:
        process.terminate()
        process.wait(timeout=30)
