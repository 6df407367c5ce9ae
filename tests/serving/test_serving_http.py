"""The HTTP/JSON port on a real server: v2 REST, TF Serving REST, the page, every status, CORS, metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time

import grpc
import numpy as np
import pytest
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from digits.v1 import digits_pb2, digits_pb2_grpc
from serving.asgi import read_body
from serving.client import read_idx
from serving.errors import InvalidInput, PayloadTooLarge
from serving.jsonbody import numeric_array
from serving.rest import STATIC, HttpApp
from tests.support.serving import failing_fn, http_call, publish_copy, publish_tf_module, wait_serving


@pytest.fixture(scope="module")
def test_images(digits_dir) -> tuple[np.ndarray, np.ndarray]:
    return read_idx(digits_dir / "t10k-images-idx3-ubyte.gz"), read_idx(
        digits_dir / "t10k-labels-idx1-ubyte.gz"
    )


def v2_body(images: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    return {
        "inputs": [
            {"name": "images", "datatype": datatype, "shape": list(images.shape), "data": images.tolist()}
        ],
        **extra,
    }


def grpc_probabilities(target: str, images: np.ndarray) -> np.ndarray:
    stub = digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(target))
    reply = stub.Predict(
        digits_pb2.PredictRequest(uint8_pixels=images.astype(np.uint8).tobytes()), timeout=30
    )
    return np.asarray(reply.probabilities, np.float32).reshape(-1, 10)


def test_v2_rest_infer_matches_grpc(served, test_images):
    images, labels = test_images
    batch = images[:32]
    expected = grpc_probabilities(served.target, batch)
    url = f"{served.base_url}/v2/models/mnist/infer"
    for body in (
        v2_body(batch.astype(np.float32)),  # nested [N, 28, 28]
        v2_body(batch.reshape(32, 784), "UINT8"),  # [N, 784]
        {
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": [32, 28, 28], "data": batch.ravel().tolist()}
            ]
        },
    ):
        status, answer, headers = http_call(url, body)
        assert status == 200, answer
        assert headers["content-type"] == "application/json"
        assert (answer["model_name"], answer["model_version"]) == ("mnist", "1")
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["probabilities"]["datatype"] == "FP32" and outputs["probabilities"]["shape"] == [
            32,
            10,
        ]
        assert outputs["classes"]["datatype"] == "INT64" and outputs["classes"]["shape"] == [32]
        probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(32, 10)
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        assert np.mean(np.asarray(outputs["classes"]["data"]) == labels[:32]) > 0.8
    # A specific version, an id, and one output.
    body = v2_body(batch[:2].astype(np.float32), id="abc", outputs=[{"name": "classes"}])
    status, answer, _ = http_call(f"{served.base_url}/v2/models/mnist/versions/1/infer", body)
    assert status == 200 and answer["id"] == "abc" and [o["name"] for o in answer["outputs"]] == ["classes"]


def test_v2_rest_health_and_metadata(served):
    base = served.base_url
    assert http_call(f"{base}/v2/health/live")[:2] == (200, {"live": True})
    assert http_call(f"{base}/v2/health/ready")[:2] == (200, {"ready": True})
    status, server, _ = http_call(f"{base}/v2")
    assert (
        status == 200
        and server["name"] == "digits-serving"
        and server["extensions"] == ["binary_tensor_data"]
    )
    assert http_call(f"{base}/v2/models/mnist/ready")[:2] == (200, {"name": "mnist", "ready": True})
    assert http_call(f"{base}/v2/models/mnist/versions/1/ready")[:2] == (
        200,
        {"name": "mnist", "ready": True},
    )
    assert http_call(f"{base}/v2/models/mnist/versions/2/ready")[0] == 503
    assert http_call(f"{base}/v2/models/fashion/ready")[0] == 404
    status, meta, _ = http_call(f"{base}/v2/models/mnist")
    assert status == 200 and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert http_call(f"{base}/v2/models/mnist/versions/1")[0] == 200
    assert http_call(f"{base}/v2/models/mnist/versions/7")[0] == 404


def test_tf_serving_rest_row_and_columnar_forms(served, test_images):
    images, labels = test_images
    batch = images[:8].astype(np.float32)
    expected = grpc_probabilities(served.target, batch)
    base = served.base_url
    for url in (f"{base}/v1/models/mnist:predict", f"{base}/v1/models/mnist/versions/1:predict"):
        for instances in (batch.tolist(), [{"images": image.tolist()} for image in batch]):
            status, answer, _ = http_call(url, {"signature_name": "serving_default", "instances": instances})
            assert status == 200, answer
            predictions = answer["predictions"]
            assert len(predictions) == 8 and set(predictions[0]) == {"probabilities", "classes"}
            np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, atol=1e-6)
            assert [p["classes"] for p in predictions] == expected.argmax(axis=1).tolist()
        for inputs in (batch.tolist(), {"images": batch.tolist()}):
            status, answer, _ = http_call(url, {"inputs": inputs})
            assert status == 200, answer
            np.testing.assert_allclose(answer["outputs"]["probabilities"], expected, atol=1e-6)
            assert answer["outputs"]["classes"] == expected.argmax(axis=1).tolist()
    assert np.mean(np.asarray(answer["outputs"]["classes"]) == labels[:8]) > 0.7
    status, model, _ = http_call(f"{base}/v1/models/mnist")
    assert status == 200
    assert model == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    status, meta, _ = http_call(f"{base}/v1/models/mnist/metadata")
    assert status == 200 and meta["model_spec"]["version"] == "1"
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert set(signature["outputs"]) == {"probabilities", "classes"}


def test_bad_requests_are_json_errors_with_the_table_status(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["trained"], root)
    server = start_server(
        model_root=root, max_images_per_request=4, max_queued_images=4, max_body_bytes=200_000
    )
    wait_serving(server.target)
    base = server.base_url
    infer = f"{base}/v2/models/mnist/infer"
    predict = f"{base}/v1/models/mnist:predict"
    one = np.zeros((1, 28, 28))
    tensor = v2_body(one)["inputs"][0]
    cases = [
        (infer, b"{not json", 400, "not valid JSON"),
        (infer, b"\xff\xfe", 400, "not valid JSON"),
        (infer, [1, 2], 400, "JSON object"),
        (infer, {"inputs": []}, 400, "exactly one"),
        (infer, {"inputs": [{**tensor, "datatype": "FP64"}]}, 400, "datatype"),
        (infer, {"inputs": [{**tensor, "shape": [1, 28, 27]}]}, 400, "shape"),
        (infer, {"inputs": [{**tensor, "shape": "1,28,28"}]}, 400, "shape"),
        (infer, {"inputs": [{**tensor, "shape": [2, 28, 28]}]}, 400, "values"),
        (infer, {"inputs": [{**tensor, "data": ["a"] * 784}]}, 400, "numbers"),
        (infer, {"inputs": [{**tensor, "data": [[1, 2], [3]]}]}, 400, "ragged"),
        (infer, {"inputs": [{**tensor, "data": [300] * 784}]}, 400, "values in"),
        (infer, {"inputs": [{**tensor, "datatype": "UINT8", "data": [0.5] * 784}]}, 400, "fractional"),
        (infer, {"inputs": [{k: v for k, v in tensor.items() if k != "data"}]}, 400, "'data'"),
        (infer, {"inputs": [{**tensor, "name": "pixels"}]}, 400, "'pixels'"),
        (infer, {**v2_body(one), "outputs": [{"name": "logits"}]}, 400, "logits"),
        (infer, v2_body(np.zeros((5, 28, 28))), 400, "limit"),
        (infer, v2_body(np.zeros((100, 28, 28))), 413, "limit of 200000"),
        (f"{base}/v2/models/fashion/infer", v2_body(one), 404, "fashion"),
        (f"{base}/v2/models/mnist/versions/3/infer", v2_body(one), 404, "version 3"),
        (f"{base}/v2/models/mnist/versions/x/infer", v2_body(one), 400, "version"),
        (predict, {"instances": one.tolist(), "inputs": one.tolist()}, 400, "exactly one"),
        (predict, {"instances": np.zeros((1, 27, 28)).tolist()}, 400, "shape"),
        (predict, {"instances": [{"pixels": one[0].tolist()}]}, 400, "key"),
        (predict, {"inputs": {"x": one.tolist()}}, 400, "'x'"),
        (predict, {"signature_name": "other", "instances": one.tolist()}, 400, "signature"),
        (f"{base}/v1/models/mnist:classify", {"instances": one.tolist()}, 400, ":predict"),
        (f"{base}/v1/models/fashion:predict", {"instances": one.tolist()}, 404, "fashion"),
        (f"{base}/v1/models/mnist/versions/0:predict", {"instances": one.tolist()}, 400, "positive"),
    ]
    for url, body, expected, fragment in cases:
        status, answer, _ = http_call(url, body)
        assert status == expected, (url, body if isinstance(body, bytes) else str(body)[:80], answer)
        assert set(answer) == {"error"} and fragment in answer["error"], (fragment, answer)
        assert "Traceback" not in answer["error"]
    assert http_call(f"{base}/v1/models/fashion")[0] == 404
    assert http_call(f"{base}/v1/models/fashion/metadata")[0] == 404
    status, answer, _ = http_call(f"{base}/no/such/path")
    assert status == 404 and "error" in answer
    status, answer, _ = http_call(f"{base}/v2/models/mnist/infer", method="GET")
    assert status == 405 and "error" in answer
    # A declared length above the limit is refused before the body is read.
    status, answer, _ = http_call(infer, b"x" * 300_000)
    assert status == 413


def test_queue_full_is_429_and_no_model_is_503(start_server, exported, tmp_path):
    empty = start_server(model_root=tmp_path / "empty")
    status, answer, _ = http_call(f"{empty.base_url}/v2/models/mnist/infer", v2_body(np.zeros((1, 28, 28))))
    assert status == 503 and "no model" in answer["error"]
    assert http_call(f"{empty.base_url}/v2/health/ready")[0] == 503
    assert http_call(f"{empty.base_url}/v2/health/live")[0] == 200

    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    # A 1 s batching delay holds the first request; the queue holds 4 images.
    server = start_server(
        model_root=root, max_queue_delay_us=1_000_000, max_queued_images=4, max_images_per_request=4
    )
    wait_serving(server.target)
    url = f"{server.base_url}/v2/models/mnist/infer"
    body = v2_body(np.zeros((3, 28, 28)))
    registry = server.server.metrics.registry
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http_call, url, body)
        deadline = time.monotonic() + 30
        while (
            registry.get_sample_value("digits_inflight_requests", {"protocol": "http"}) != 1
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        status, answer, _ = http_call(url, body)
        assert status == 429 and "queue is full" in answer["error"]
        assert first.result()[0] == 200


def test_internal_errors_are_500_without_details(start_server, tmp_path):
    root = tmp_path / "models"
    publish_tf_module(root, failing_fn(max_ok=2))
    server = start_server(model_root=root)
    wait_serving(server.target)
    status, answer, _ = http_call(f"{server.base_url}/v2/models/mnist/infer", v2_body(np.zeros((3, 28, 28))))
    assert status == 500
    assert answer == {"error": "internal error; the server logged the details"}


def test_cors_is_off_unless_origins_are_configured(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    plain = start_server(model_root=root)
    allowed = start_server(model_root=root, cors_origins=["https://digits.example"])
    wait_serving(plain.target)
    wait_serving(allowed.target)
    preflight = {"Origin": "https://digits.example", "Access-Control-Request-Method": "POST"}
    for server, expect in ((plain, None), (allowed, "https://digits.example")):
        url = f"{server.base_url}/v2/models/mnist/infer"
        _, _, headers = http_call(
            url, v2_body(np.zeros((1, 28, 28))), headers={"Origin": "https://digits.example"}
        )
        assert headers.get("access-control-allow-origin") == expect
        status, _, headers = http_call(url, method="OPTIONS", headers=preflight)
        assert headers.get("access-control-allow-origin") == expect
        assert (status == 200) == (expect is not None)
    # An origin not on the list gets no CORS headers.
    _, _, headers = http_call(
        f"{allowed.base_url}/v2/models/mnist/infer",
        v2_body(np.zeros((1, 28, 28))),
        headers={"Origin": "https://evil.example"},
    )
    assert "access-control-allow-origin" not in headers


def test_http_requests_share_the_metrics_with_a_protocol_label(served):
    base = served.base_url
    http_call(f"{base}/v2/models/mnist/infer", v2_body(np.zeros((2, 28, 28))))
    http_call(f"{base}/v2/models/mnist/infer", b"{")
    http_call(f"{base}/v1/models/mnist:predict", {"instances": np.zeros((1, 28, 28)).tolist()})
    grpc_probabilities(served.target, np.zeros((1, 28, 28)))
    registry = served.server.metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("digits_requests_total", protocol="http", method="v2.ModelInfer", code="OK") == 1
    assert (
        value("digits_requests_total", protocol="http", method="v2.ModelInfer", code="INVALID_ARGUMENT") == 1
    )
    assert value("digits_requests_total", protocol="http", method="tfs.Predict", code="OK") == 1
    assert value("digits_requests_total", protocol="grpc", method="Predict", code="OK") == 1
    assert value("digits_request_duration_seconds_count", protocol="http", method="v2.ModelInfer") == 2
    assert value("digits_inflight_requests", protocol="http") == 0
    assert value("digits_images_classified_total") == 4  # one batcher behind both protocols


def test_the_page_and_its_files_are_served_and_self_contained(served):
    status, page, headers = http_call(f"{served.base_url}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<meta name="digits-model" content="mnist">' in page and "/static/draw.js" in page
    for name, kind in (("draw.js", "javascript"), ("draw.css", "text/css")):
        status, _, headers = http_call(f"{served.base_url}/static/{name}")
        assert status == 200 and kind in headers["content-type"]
    # Works offline: no file of the page loads anything from another origin.
    for path in STATIC.iterdir():
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", path.read_text()), path.name
        assert "import(" not in path.read_text() and "cdn" not in path.read_text().lower(), path.name


def test_small_responses_are_not_held_back_by_nagle(served):
    """TCP_NODELAY on accepted connections: without it each keep-alive answer waits ~40 ms for an ACK."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=10)
    connection.request("GET", "/v2/health/live")
    connection.getresponse().read()
    started = time.perf_counter()
    for _ in range(20):
        connection.request(
            "POST", "/v2/models/mnist/infer", body=b"{", headers={"Content-Type": "application/json"}
        )
        assert connection.getresponse().read()
    connection.close()
    assert time.perf_counter() - started < 0.5  # 20 x 40 ms would be 0.8 s


def test_the_direct_infer_route_matches_what_starlette_would_route():
    """HttpApp sends infer POSTs past Starlette: it must pick the same paths and parameters."""
    routes = [
        Route("/v2/models/{name}/infer", HttpApp),
        Route("/v2/models/{name}/versions/{version}/infer", HttpApp),
    ]
    paths = [
        "/v2/models/mnist/infer",
        "/v2/models/mnist/versions/3/infer",
        "/v2/models/versions/versions/x/infer",
        "/v2/models/mnist/versions/infer",
        "/v2/models//infer",
        "/v2/models/a/b/infer",
        "/v2/models/mnist/infer/",
        "/v2/models/mnist/versions/1/2/infer",
    ]
    for path in paths:
        scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        starlette = next(
            (
                child["path_params"]
                for route in routes
                for match, child in [route.matches(scope)]
                if match == Match.FULL
            ),
            None,
        )
        match = HttpApp.INFER_PATH.match(path)
        direct = None if match is None else {k: v for k, v in match.groupdict().items() if v is not None}
        assert direct == starlette, path


def test_bodies_are_read_in_chunks_within_the_limit():
    def receiver(*messages):
        queue = list(messages)

        async def receive():
            return queue.pop(0)

        return receive

    def chunk(body: bytes, more: bool) -> dict:
        return {"type": "http.request", "body": body, "more_body": more}

    scope = {"headers": [(b"content-type", b"application/json")]}  # no content-length: streamed
    assert (
        asyncio.run(read_body(scope, receiver(chunk(b"ab", True), chunk(b"", True), chunk(b"c", False)), 3))
        == b"abc"
    )
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 3 bytes"):
        asyncio.run(read_body(scope, receiver(chunk(b"ab", True), chunk(b"cd", False)), 3))
    with pytest.raises(PayloadTooLarge, match="the body has 9 bytes"):
        asyncio.run(read_body({"headers": [(b"content-length", b"9")]}, receiver(), 3))
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(scope, receiver(chunk(b"a", True), {"type": "http.disconnect"}), 3))


def test_the_whole_pixel_shortcut_accepts_and_refuses_what_numpy_did():
    """numeric_array takes flat lists of integers 0..255 through bytearray; everything else through numpy."""
    cases = [
        list(range(256)),
        [0, True, 255],  # booleans among integers were integers to numpy too
        [True, 1],
        [True, False],  # booleans alone were refused
        [1, 2.5],
        [1, 256],
        [255, -1],
        [1, 2**63],
        [1, 2**70],
        [1, "2"],
        [1, None],
        [[1, 2], [3, 4]],
        [[1, 2], [3]],
        [],
    ]
    for data in cases:
        try:
            before = np.asarray(data)
            refused = before.dtype.kind not in "iuf"
        except (ValueError, TypeError, OverflowError):
            refused = True
        if refused:
            with pytest.raises(InvalidInput):
                numeric_array(data, "data")
        else:
            after = numeric_array(data, "data")
            assert after.shape == before.shape and np.array_equal(after, before), data
