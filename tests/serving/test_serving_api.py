"""The digits.v1 and TF Serving APIs against a real server: answers, every status code, health, CLI."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

import modelrepo
from digits.v1 import digits_pb2, digits_pb2_grpc
from serving import errors
from serving.server import create_server
from serving.settings import Settings
from tests.support import REPO, free_port
from tests.support.serving import (
    failing_fn,
    fixed_rows_fn,
    publish_copy,
    publish_tf_module,
    wait_serving,
)

OK, INVALID, NOT_FOUND, EXHAUSTED, UNAVAILABLE, INTERNAL = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
)


def digits_stub(target: str) -> digits_pb2_grpc.DigitClassifierStub:
    return digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(target))


def tfs_stub(target: str) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))


def call_code(method, request) -> tuple[grpc.StatusCode, str]:
    try:
        method(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return OK, ""


def tfs_request(array: np.ndarray, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "mnist")
    request.model_spec.signature_name = spec.pop("signature_name", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    request.inputs[spec.pop("key", "images")].CopyFrom(tf.make_tensor_proto(array))
    return request


def test_predict_uint8_and_float_forms_agree_and_are_accurate(served, test_images):
    images, labels = test_images
    stub = digits_stub(served.target)
    compact = stub.Predict(digits_pb2.PredictRequest(uint8_pixels=images.tobytes()), timeout=30)
    floats = stub.Predict(
        digits_pb2.PredictRequest(
            num_images=len(images),
            float_pixels=digits_pb2.FloatPixels(values=images.astype(np.float32).ravel().tolist()),
        ),
        timeout=30,
    )
    assert (compact.model_name, compact.model_version) == ("mnist", 1)
    assert list(compact.digits) == list(floats.digits)
    probabilities = np.array(compact.probabilities).reshape(len(images), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), compact.digits)
    np.testing.assert_allclose(probabilities.max(axis=1), compact.confidences, rtol=1e-6)
    assert np.mean(np.array(compact.digits) == labels) > 0.8  # fitted on 3000 images


def test_tf_serving_stub_predict_and_metadata(served, test_images):
    images, _ = test_images
    stub = tfs_stub(served.target)
    response = stub.Predict(tfs_request(images[:5].astype(np.float32)), timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    classes = tf.make_ndarray(response.outputs["classes"])
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    assert classes.dtype == np.int64
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=1))
    digits = digits_stub(served.target).Predict(
        digits_pb2.PredictRequest(uint8_pixels=images[:5].tobytes()), timeout=30
    )
    assert list(classes) == list(digits.digits)
    assert (response.model_spec.name, response.model_spec.version.value) == ("mnist", 1)

    filtered = tfs_request(images[:2].astype(np.float32), version=1)
    filtered.output_filter.append("classes")
    assert list(stub.Predict(filtered, timeout=30).outputs) == ["classes"]

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    metadata = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    images_info = signatures.signature_def["serving_default"].inputs["images"]
    assert images_info.dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in images_info.tensor_shape.dim] == [-1, 28, 28]
    assert set(signatures.signature_def["serving_default"].outputs) == {"probabilities", "classes"}


def test_digits_metadata(served):
    response = digits_stub(served.target).GetModelMetadata(digits_pb2.GetModelMetadataRequest(), timeout=30)
    assert response.model_name == "mnist" and response.default_version == 1
    assert [v.version for v in response.versions] == [1]
    assert response.versions[0].val_accuracy == pytest.approx(0.88)
    assert list(response.input.shape) == [-1, 28, 28] and response.input.input_key == "images"
    assert response.input.max_value == 255 and response.input.max_images_per_request == 1024


def _bad_digits_requests(images: np.ndarray) -> list[tuple[str, digits_pb2.PredictRequest, grpc.StatusCode]]:
    one = images[:1]
    floats = one.astype(np.float32).ravel()
    return [
        ("byte length", digits_pb2.PredictRequest(uint8_pixels=one.tobytes()[:-1]), INVALID),
        ("count mismatch", digits_pb2.PredictRequest(num_images=2, uint8_pixels=one.tobytes()), INVALID),
        ("empty bytes", digits_pb2.PredictRequest(uint8_pixels=b""), INVALID),
        ("no pixels", digits_pb2.PredictRequest(), INVALID),
        (
            "nan",
            digits_pb2.PredictRequest(float_pixels=digits_pb2.FloatPixels(values=[np.nan, *floats[1:]])),
            INVALID,
        ),
        (
            "inf",
            digits_pb2.PredictRequest(float_pixels=digits_pb2.FloatPixels(values=[*floats[1:], np.inf])),
            INVALID,
        ),
        (
            "above 255",
            digits_pb2.PredictRequest(float_pixels=digits_pb2.FloatPixels(values=[256.0, *floats[1:]])),
            INVALID,
        ),
        (
            "negative",
            digits_pb2.PredictRequest(float_pixels=digits_pb2.FloatPixels(values=[-0.5, *floats[1:]])),
            INVALID,
        ),
        (
            "float length",
            digits_pb2.PredictRequest(float_pixels=digits_pb2.FloatPixels(values=[1.0])),
            INVALID,
        ),
        ("over limit", digits_pb2.PredictRequest(uint8_pixels=bytes(1025 * 784)), INVALID),
        (
            "negative version",
            digits_pb2.PredictRequest(model_version=-1, uint8_pixels=one.tobytes()),
            INVALID,
        ),
        (
            "unknown model",
            digits_pb2.PredictRequest(model_name="nope", uint8_pixels=one.tobytes()),
            NOT_FOUND,
        ),
        (
            "unknown version",
            digits_pb2.PredictRequest(model_version=7, uint8_pixels=one.tobytes()),
            NOT_FOUND,
        ),
    ]


def test_digits_status_codes(served, test_images):
    stub = digits_stub(served.target)
    for label, request, expected in _bad_digits_requests(test_images[0]):
        code, details = call_code(stub.Predict, request)
        assert code == expected, (label, code, details)
        assert details and "Traceback" not in details, label
    code, details = call_code(stub.GetModelMetadata, digits_pb2.GetModelMetadataRequest(model_name="nope"))
    assert code == NOT_FOUND and "nope" in details
    # Not even protobuf: parsed by the server, so still the client's mistake.
    raw = grpc.insecure_channel(served.target).unary_unary("/digits.v1.DigitClassifier/Predict")
    code, details = call_code(raw, b"\xff\xff\xff")
    assert code == INVALID and "digits.v1.PredictRequest" in details
    # Bigger than max_message_bytes (8 MiB): refused by gRPC before it reaches the handler.
    code, _ = call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(9 * 1024 * 1024)))
    assert code == EXHAUSTED


def test_tf_serving_status_codes(served, test_images):
    stub = tfs_stub(served.target)
    good = test_images[0][:2].astype(np.float32)
    label_request = tfs_request(good)
    label_request.model_spec.version_label = "stable"
    no_input = tfs_request(good)
    del no_input.inputs["images"]
    bad_filter = tfs_request(good)
    bad_filter.output_filter.append("logits")
    cases = [
        ("dtype", tfs_request(good.astype(np.float64)), INVALID),
        ("shape", tfs_request(good.reshape(2, 784)), INVALID),
        ("empty", tfs_request(np.zeros((0, 28, 28), np.float32)), INVALID),
        ("range", tfs_request(good * 2 + 1), INVALID),
        ("nan", tfs_request(np.full((1, 28, 28), np.nan, np.float32)), INVALID),
        ("signature", tfs_request(good, signature_name="predict"), INVALID),
        ("input key", tfs_request(good, key="pixels"), INVALID),
        ("no input", no_input, INVALID),
        ("version label", label_request, INVALID),
        ("output filter", bad_filter, INVALID),
        ("unknown model", tfs_request(good, name="fashion"), NOT_FOUND),
        ("unknown version", tfs_request(good, version=3), NOT_FOUND),
    ]
    for label, request, expected in cases:
        code, details = call_code(stub.Predict, request)
        assert code == expected, (label, code, details)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["everything"])
    assert call_code(stub.GetModelMetadata, metadata)[0] == INVALID
    assert (
        call_code(stub.Classify, classification_pb2.ClassificationRequest())[0]
        == grpc.StatusCode.UNIMPLEMENTED
    )


def test_error_table_covers_every_error_class():
    for error_type, expected, http in [
        (errors.InvalidInput, INVALID, 400),
        (errors.ModelNotFound, NOT_FOUND, 404),
        (errors.ModelUnavailable, UNAVAILABLE, 503),
        (errors.Overloaded, EXHAUSTED, 429),
        (errors.PayloadTooLarge, EXHAUSTED, 413),
    ]:
        assert errors.status_for(error_type("detail")) == (expected, "detail")
        assert errors.classify(error_type("detail")) == (errors.Status(expected, http), "detail")
    assert errors.status_for(KeyError("secret")) == (INTERNAL, errors.INTERNAL_MESSAGE)
    assert errors.classify(KeyError("secret")) == (errors.Status(INTERNAL, 500), errors.INTERNAL_MESSAGE)
    assert {cls for cls, _ in errors.STATUS_TABLE} == set(errors.ServingError.__subclasses__())


def test_unavailable_until_a_model_loads_then_serving(start_server, exported, tmp_path):
    root = tmp_path / "models"
    server = start_server(model_root=root)
    channel = grpc.insecure_channel(server.target)
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)
    assert liveness.status == health_pb2.HealthCheckResponse.SERVING  # alive while waiting for a model
    request = digits_pb2.PredictRequest(uint8_pixels=bytes(784))
    code, details = call_code(digits_stub(server.target).Predict, request)
    assert code == UNAVAILABLE and "no model" in details
    publish_copy(exported["random"], root)
    wait_serving(server.target, service="digits.v1.DigitClassifier")
    assert call_code(digits_stub(server.target).Predict, request)[0] == OK


def test_model_with_only_broken_versions_is_unavailable_others_serve(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root, name="other")
    modelrepo.publish(
        root,
        modelrepo.read_metadata(exported["random"]),
        lambda staging: (staging / modelrepo.SAVED_MODEL_FILE).write_bytes(b"not a SavedModel"),
    )
    server = start_server(model_root=root)
    wait_serving(server.target)
    stub = digits_stub(server.target)
    one = bytes(784)
    response = stub.Predict(digits_pb2.PredictRequest(model_name="other", uint8_pixels=one), timeout=30)
    assert response.model_name == "other"
    code, details = call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=one))
    assert code == UNAVAILABLE and "'mnist' has no loaded version" in details
    registry = server.server.metrics.registry
    failures = registry.get_sample_value("digits_model_loads_total", {"model": "mnist", "outcome": "failure"})
    assert failures == 1
    assert registry.get_sample_value("digits_model_loaded_version", {"model": "mnist"}) == 0


def test_internal_errors_send_no_detail(start_server, tmp_path):
    root = tmp_path / "models"
    publish_tf_module(root, failing_fn(max_ok=2))
    server = start_server(model_root=root)
    wait_serving(server.target)
    stub = digits_stub(server.target)
    assert call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(2 * 784)))[0] == OK
    code, details = call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(3 * 784)))
    assert (code, details) == (INTERNAL, errors.INTERNAL_MESSAGE)
    assert call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(784)))[0] == OK  # still up


def test_a_model_answering_the_wrong_shape_is_internal_and_the_batcher_survives(start_server, tmp_path):
    root = tmp_path / "models"
    publish_tf_module(root, fixed_rows_fn(rows=2))
    server = start_server(model_root=root)
    wait_serving(server.target)
    stub = digits_stub(server.target)
    for _ in range(2):
        assert call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(2 * 784)))[0] == OK
        code, details = call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(784)))
        assert (code, details) == (INTERNAL, errors.INTERNAL_MESSAGE)


def test_queue_full_is_resource_exhausted(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    # A 1 s batching delay holds the first request in the queue; the queue holds 4 images.
    server = start_server(
        model_root=root, max_queue_delay_us=1_000_000, max_queued_images=4, max_images_per_request=4
    )
    wait_serving(server.target)
    stub = digits_stub(server.target)
    request = digits_pb2.PredictRequest(uint8_pixels=bytes(3 * 784))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(call_code, stub.Predict, request)
        registry = server.server.metrics.registry
        deadline = time.monotonic() + 30
        inflight = ("digits_inflight_requests", {"protocol": "grpc"})
        while registry.get_sample_value(*inflight) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        code, details = call_code(stub.Predict, request)
        assert code == EXHAUSTED and "queue is full" in details
        assert first.result()[0] == OK


def test_specific_versions_and_eviction(start_server, exported, tmp_path):
    root = tmp_path / "models"
    for source in ("random", "trained", "random"):
        publish_copy(exported[source], root)
    server = start_server(model_root=root, max_loaded_versions=2)
    wait_serving(server.target)
    stub = digits_stub(server.target)
    one = bytes(784)
    for version in (0, 3, 2):
        response = stub.Predict(
            digits_pb2.PredictRequest(model_version=version, uint8_pixels=one), timeout=30
        )
        assert response.model_version == (version or 3)
    code, details = call_code(stub.Predict, digits_pb2.PredictRequest(model_version=1, uint8_pixels=one))
    assert code == NOT_FOUND and "loaded: 3, 2" in details


def test_reflection_lists_every_service(served):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(served.target))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert {service.name for service in response.list_services_response.service} == {
        "digits.v1.DigitClassifier",
        "tensorflow.serving.PredictionService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_tls(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = start_server(model_root=root, tls_cert=cert, tls_key=key)
    credentials = grpc.ssl_channel_credentials(cert.read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = digits_pb2_grpc.DigitClassifierStub(channel)
        deadline = time.monotonic() + 30
        while True:
            code, _ = call_code(stub.Predict, digits_pb2.PredictRequest(uint8_pixels=bytes(784)))
            if code != UNAVAILABLE or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == OK
    assert call_code(digits_stub(server.target).Predict, digits_pb2.PredictRequest())[0] == UNAVAILABLE


def run_client(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "serving.client", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_client_cli_classifies_idx_png_and_npy(served, test_images, digits_dir, tmp_path):
    from PIL import Image

    images, labels = test_images
    Image.fromarray(images[0]).save(tmp_path / "zero.png")
    np.save(tmp_path / "batch.npy", images[1:4].astype(np.float32))
    idx_images = str(digits_dir / "t10k-images-idx3-ubyte.gz")
    idx_labels = str(digits_dir / "t10k-labels-idx1-ubyte.gz")
    png, npy = str(tmp_path / "zero.png"), str(tmp_path / "batch.npy")
    result = run_client(
        "--target", served.target, "--idx", idx_images, "--count", "100", "--labels", idx_labels, png, npy
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 104
    assert lines[0].startswith(f"{png}\tdigit=") and "confidence=" in lines[0]
    assert lines[1].startswith(f"{npy}[0]\tdigit=")
    assert f"label={labels[0]}" in lines[4]
    accuracy = float(result.stdout.split("# accuracy ")[1].split()[0])
    assert accuracy > 0.8

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 28)))
    result = run_client("--target", served.target, str(bad))
    assert result.returncode == 2 and "expected [28, 28]" in result.stderr
    help_text = run_client("--help").stdout
    assert "--idx" in help_text and "--count" in help_text and "PNG" in help_text


def test_building_the_server_opens_no_port_start_opens_them_stop_closes_them(tmp_path):
    ports = [free_port(), free_port(), free_port()]
    settings = Settings(
        model_root=tmp_path / "models",
        host="127.0.0.1",
        port=ports[0],
        http_port=ports[1],
        metrics_host="127.0.0.1",
        metrics_port=ports[2],
    )

    def listening() -> list[bool]:
        found = []
        for port in ports:
            with socket.socket() as sock:
                found.append(sock.connect_ex(("127.0.0.1", port)) == 0)
        return found

    async def scenario() -> None:
        server = create_server(settings)
        assert listening() == [False, False, False]
        await server.start()
        assert (server.port, server.http_port, server.metrics_port) == tuple(ports)
        assert listening() == [True, True, True]
        await server.stop(0.5)
        # The gRPC core may close its listener on its own threads just after stop() returns: allow
        # it a moment, then every port must be closed.
        for _ in range(50):
            if listening() == [False, False, False]:
                break
            await asyncio.sleep(0.1)
        assert listening() == [False, False, False]

    asyncio.run(scenario())
