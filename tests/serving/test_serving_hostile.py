"""Hostile and broken clients on a real server: each test pins one defect found by probing the ports."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from digits.inference import grpc_predict_v2_pb2 as pb
from digits.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.errors import InvalidInput
from serving.metrics import ServingMetrics
from serving.model_store import ModelStore
from serving.wire import parse_version
from tests.support.serving import http_call, publish_copy, wait_serving

ONE = np.zeros((1, 28, 28), np.float32)
V2_BODY = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28], "data": ONE.tolist()}]}
TFS_BODY = {"instances": ONE.tolist()}
# Strings str.isdigit() accepts and int() refuses (superscript two, circled one), and a number past
# Python's 4,300-digit int() limit.
BAD_VERSIONS = ["\u00b2", "\u2460", "1" * 5000]


def _quoted(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode()) if not text.isascii() else text


def _metric(server, name: str, **labels: str) -> float | None:
    return server.server.metrics.registry.get_sample_value(name, labels)


def _raw_http(port: int, data: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# ---- defect 1: one version parser, ASCII digits only, bounded ----
def test_the_version_parser_takes_ascii_digits_only():
    assert parse_version("", "version") is None
    assert parse_version("7", "version") == 7
    assert parse_version("007", "version") == 7
    for text in ["0", "-1", "+1", " 1", "1.0", "x", *BAD_VERSIONS, "9" * 20]:
        with pytest.raises(InvalidInput, match="version must be"):
            parse_version(text, "version")


def test_non_ascii_and_huge_versions_are_400_on_both_rest_apis(served):
    base = served.base_url
    for version in BAD_VERSIONS:
        quoted = _quoted(version)
        for path, body in (
            (f"/v2/models/mnist/versions/{quoted}/infer", V2_BODY),
            (f"/v2/models/mnist/versions/{quoted}/ready", None),
            (f"/v2/models/mnist/versions/{quoted}", None),
            (f"/v1/models/mnist/versions/{quoted}:predict", TFS_BODY),
            (f"/v1/models/mnist/versions/{quoted}", None),
            (f"/v1/models/mnist/versions/{quoted}/metadata", None),
        ):
            status, answer, _ = http_call(base + path, body)
            assert status == 400, (path[:60], answer)
            assert "version" in answer["error"] and len(answer["error"]) < 400, answer
    assert (
        _metric(served, "digits_requests_total", protocol="http", method="v2.ModelInfer", code="INTERNAL")
        is None
    )


def test_non_ascii_and_huge_versions_are_invalid_argument_on_v2_grpc(served):
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(served.target))
    for version in BAD_VERSIONS:
        request = pb.ModelInferRequest(model_name="mnist", model_version=version)
        request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28])
        request.raw_input_contents.append(ONE.tobytes())
        for call, message in (
            (stub.ModelInfer, request),
            (stub.ModelReady, pb.ModelReadyRequest(name="mnist", version=version)),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="mnist", version=version)),
        ):
            with pytest.raises(grpc.RpcError) as error:
                call(message, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
            assert "version" in error.value.details() and len(error.value.details()) < 400


# ---- defect 2: the v2 id is a string ----
def test_a_v2_id_that_is_not_a_string_is_400_before_inference(served):
    url = f"{served.base_url}/v2/models/mnist/infer"
    body = json.dumps(V2_BODY).encode()
    deep = b"[" * 1000 + b'"x"' + b"]" * 1000  # json.dumps itself cannot nest that deep
    for bad in (deep, b"5", b'{"a": 1}', b"null"):
        status, answer, _ = http_call(url, body[:-1] + b', "id": ' + bad + b"}")
        assert status == 400 and "'id'" in answer["error"], answer
    assert _metric(served, "digits_images_classified_total") in (None, 0.0)  # the model never ran
    status, answer, _ = http_call(url, {**V2_BODY, "id": "abc"})
    assert status == 200 and answer["id"] == "abc"


# ---- defect 3: a client that goes away is CANCELLED, logged in one line ----
def test_a_client_aborting_mid_body_is_cancelled_not_internal(served, caplog):
    caplog.set_level(logging.INFO)
    head = (
        b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    _raw_http(served.http_port, head + b'{"inputs": [', read=False)
    chunked = (
        b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"inp\r\nZZ\r\nnot a chunk\r\n\r\n'
    )
    _raw_http(served.http_port, chunked)
    labels = {"protocol": "http", "method": "v2.ModelInfer"}
    deadline = time.monotonic() + 10
    while _metric(served, "digits_requests_total", **labels, code="CANCELLED") != 2:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert _metric(served, "digits_requests_total", **labels, code="INTERNAL") is None
    assert _metric(served, "digits_inflight_requests", protocol="http") == 0
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    assert "Traceback" not in caplog.text


# ---- defect 4: header size and count are capped ----
def test_oversized_or_too_many_headers_are_431(served):
    port = served.http_port
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    big = request + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    many = request + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"
    spread = request + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(90)) + b"\r\n"
    for data in (big, many, spread):
        answer = _raw_http(port, data)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    ok = request + b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 100) for i in range(50)) + b"\r\n"
    assert _raw_http(port, ok).startswith(b"HTTP/1.1 200 ")


# ---- defect 5: a large body does not stall the event loop ----
def test_a_16_mb_body_of_empty_lists_does_not_stall_good_requests(served):
    url = f"{served.base_url}/v2/models/mnist/infer"
    count = (16 * 1024 * 1024 - 200) // 3
    lists = b",".join([b"[]"] * count)
    hostile = [
        b'{"inputs":[{"name":"images","datatype":"FP32","shape":[1,28,28],"data":[' + lists + b"]}]}",
        b"[" + lists + b"]",
        b'{"instances":[' + lists + b"]}",
    ]
    assert http_call(url, V2_BODY)[0] == 200
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for index, body in enumerate(hostile):
            target = url if index < 2 else f"{served.base_url}/v1/models/mnist:predict"
            bad = pool.submit(http_call, target, body)
            time.sleep(0.3)  # the body is on its way or being decoded
            latencies = []
            while not bad.done():
                started = time.perf_counter()
                assert http_call(url, V2_BODY)[0] == 200
                latencies.append(time.perf_counter() - started)
            status, answer, _ = bad.result()
            assert status == 400 and "error" in answer, answer
            assert max(latencies, default=0) < 1.0, latencies


# ---- defect 6: idle and slow connections are closed ----
def _closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float:
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        if drip:
            try:
                sock.sendall(drip)
            except OSError:
                return time.monotonic() - started
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
    raise AssertionError(f"the connection was still open after {seconds} s")


def test_idle_and_slowloris_http_connections_are_closed(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    server = start_server(model_root=root, http_idle_timeout_seconds=0.5, http_header_timeout_seconds=1.0)
    wait_serving(server.target)
    address = ("127.0.0.1", server.http_port)
    with socket.create_connection(address) as never_used:
        assert _closed_within(never_used, 5) < 3
    with socket.create_connection(address) as slow:
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        assert _closed_within(slow, 5, drip=b"X") < 3  # a byte every 0.2 s never completes the headers
    with socket.create_connection(address) as kept:
        kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_within(kept, 5) < 3


def _answer(sock: socket.socket) -> bytes:
    """Read one HTTP answer (with a content-length) off a keep-alive connection; return its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, rest
        rest += chunk
    assert len(rest) == length, rest
    return head.split(b"\r\n")[0]


def test_a_slow_http_body_is_closed_and_cancelled(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    server = start_server(model_root=root, http_body_timeout_seconds=1.0)
    wait_serving(server.target)
    address = ("127.0.0.1", server.http_port)
    url = f"{server.base_url}/v2/models/mnist/infer"
    body = json.dumps(V2_BODY).encode()
    head = b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection(address) as slow:
        slow.sendall(head + b"Content-Length: 1000000\r\n\r\n" + b'{"inputs": [')
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            closed = pool.submit(_closed_within, slow, 10, b" ")  # a byte every 0.2 s never ends the body
            while not closed.done():  # good requests are answered promptly meanwhile
                started = time.perf_counter()
                assert http_call(url, V2_BODY)[0] == 200
                assert time.perf_counter() - started < 1.0
            assert closed.result() < 4
    labels = {"protocol": "http", "method": "v2.ModelInfer"}
    deadline = time.monotonic() + 10
    while _metric(server, "digits_requests_total", **labels, code="CANCELLED") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _metric(server, "digits_requests_total", **labels, code="INTERNAL") is None
    # A body in time, a request without one, and keep-alive requests after them, each past the timeout.
    with socket.create_connection(address, timeout=10) as kept:
        kept.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        time.sleep(0.5)
        kept.sendall(body[100:])
        assert _answer(kept) == b"HTTP/1.1 200 OK"
        time.sleep(1.5)
        kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(kept) == b"HTTP/1.1 200 OK"
        time.sleep(1.5)
        kept.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert _answer(kept) == b"HTTP/1.1 200 OK"


def test_idle_grpc_connections_are_closed(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    server = start_server(model_root=root, grpc_handshake_timeout_seconds=1.0, grpc_idle_timeout_seconds=1.0)
    wait_serving(server.target)
    address = ("127.0.0.1", server.port)
    with socket.create_connection(address) as silent:  # never sends the HTTP/2 preface
        assert _closed_within(silent, 10) < 6
    with socket.create_connection(address) as idle:  # a connection with no call on it
        idle.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert _closed_within(idle, 10) < 6


# ---- defect 7: client strings echoed in errors are truncated ----
def test_long_client_strings_are_truncated_in_error_messages(served):
    channel = grpc.insecure_channel(served.target)
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)
    long_name = "m" * 100_000
    request = pb.ModelInferRequest(model_name=long_name)
    request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28])
    request.raw_input_contents.append(ONE.tobytes())
    wrong_input = pb.ModelInferRequest(model_name="mnist")
    wrong_input.inputs.add(name=long_name, datatype="FP32", shape=[1, 28, 28])
    wrong_input.raw_input_contents.append(ONE.tobytes())
    tfs = predict_pb2.PredictRequest()
    tfs.model_spec.name = long_name
    for call, message, code in (
        (v2.ModelInfer, request, grpc.StatusCode.NOT_FOUND),
        (v2.ModelInfer, wrong_input, grpc.StatusCode.INVALID_ARGUMENT),
        (v2.ModelReady, pb.ModelReadyRequest(name=long_name), grpc.StatusCode.NOT_FOUND),
        (prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, tfs, grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(message, timeout=30)
        assert error.value.code() == code, error.value.details()[:200]
        assert len(error.value.details()) < 1000 and "characters" in error.value.details()
    status, answer, _ = http_call(f"{served.base_url}/v2/models/{long_name[:20_000]}/infer", V2_BODY)
    assert status == 404 and len(answer["error"]) < 1000


# ---- defect 8: the model store swaps one frozen snapshot ----
def test_the_model_store_swaps_one_frozen_snapshot(exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    assignments: list[str] = []

    class Spy(ModelStore):
        def __setattr__(self, name: str, value: object) -> None:
            assignments.append(name)
            super().__setattr__(name, value)

    store = Spy(root, ServingMetrics())
    assignments.clear()
    assert store.refresh()
    publish_copy(exported["trained"], root)
    assert store.refresh()
    state = [name for name in assignments if name != "_failed"]
    assert state == ["_snapshot", "_snapshot"], assignments  # one assignment per change, nothing else
    snapshot = store._snapshot
    assert store.get("mnist").version == 2 and [m.version for m in store.versions("mnist")] == [2, 1]
    with pytest.raises(TypeError):
        snapshot.models["mnist"][3] = None  # frozen: a reader can never see it change under it
    with pytest.raises(AttributeError):
        snapshot.latest = {}  # type: ignore[misc]
