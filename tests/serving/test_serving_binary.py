"""The v2 REST binary tensor data extension, with Triton's own HTTP client in both of its modes."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from digits.v1 import digits_pb2, digits_pb2_grpc
from tests.support.serving import http_call


def _expected(target: str, images: np.ndarray) -> np.ndarray:
    stub = digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(target))
    reply = stub.Predict(
        digits_pb2.PredictRequest(uint8_pixels=images.astype(np.uint8).tobytes()), timeout=30
    )
    return np.asarray(reply.probabilities, np.float32).reshape(-1, 10)


def _infer(
    client, images: np.ndarray, datatype: str, *, binary_in: bool, binary_out: bool | None, outputs=None
):
    tensor = triton_http.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary_in)
    requested = None
    if binary_out is not None:
        requested = [triton_http.InferRequestedOutput(name, binary_data=binary_out) for name in outputs]
    return client.infer("mnist", [tensor], outputs=requested, request_id="r-1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary-default", "json"])
def test_tritonclient_http_gets_answers_in_binary_and_json_modes(served, test_images, binary):
    images, labels = test_images
    batch = images[:16]
    expected = _expected(served.target, batch)
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{served.http_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mnist")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("mnist")["inputs"][0]["name"] == "images"
    forms = [
        (batch.astype(np.float32), "FP32"),
        (batch.reshape(16, 784).astype(np.uint8), "UINT8"),
    ]
    for array, datatype in forms:
        # No outputs named: the client asks for every output in binary (binary_data_output); then both
        # outputs named with the mode's binary_data flag.
        for outputs in (None, ["probabilities", "classes"]):
            result = _infer(
                client,
                array,
                datatype,
                binary_in=binary,
                binary_out=None if outputs is None else binary,
                outputs=outputs,
            )
            response = result.get_response()
            assert response["model_name"] == "mnist" and response["id"] == "r-1"
            sent_binary = outputs is None or binary
            for output in response["outputs"]:
                assert ("data" in output) != sent_binary, output.keys()
            probabilities = result.as_numpy("probabilities")
            assert probabilities.dtype == np.float32 and probabilities.shape == (16, 10)
            np.testing.assert_allclose(probabilities, expected, atol=1e-6)
            classes = result.as_numpy("classes")
            assert classes.dtype == np.int64 and classes.tolist() == expected.argmax(axis=1).tolist()
    assert np.mean(classes == labels[:16]) > 0.7
    # One output only, and a model that does not exist.
    result = _infer(
        client, batch.astype(np.float32), "FP32", binary_in=binary, binary_out=binary, outputs=["classes"]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["classes"]
    with pytest.raises(InferenceServerException, match="fashion"):
        tensor = triton_http.InferInput("images", [1, 28, 28], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 28, 28), np.float32), binary_data=binary)
        client.infer("fashion", [tensor])
    client.close()


def _binary_request(header: dict, blob: bytes, length: int | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text) if length is None else length)}


def test_binary_requests_are_checked(served):
    url = f"{served.base_url}/v2/models/mnist/infer"
    image = np.full((1, 28, 28), 7, np.uint8)
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": [1, 28, 28],
        "parameters": {"binary_data_size": 784},
    }
    good, headers = _binary_request({"inputs": [tensor], "outputs": [{"name": "classes"}]}, image.tobytes())
    status, answer, found = http_call(url, good, headers=headers)
    assert status == 200 and answer["outputs"][0]["data"] == [int(_expected(served.target, image).argmax())]
    assert "inference-header-content-length" not in {k.lower() for k in found}
    cases = [
        (_binary_request({"inputs": [tensor]}, image.tobytes()[:-1]), "784"),
        (_binary_request({"inputs": [tensor]}, image.tobytes() + b"x"), "785"),
        (_binary_request({"inputs": [{**tensor, "data": [0] * 784}]}, image.tobytes()), "both"),
        (_binary_request({"inputs": [{**tensor, "parameters": {}}]}, image.tobytes()), "no input has"),
        (_binary_request({"inputs": [tensor]}, image.tobytes(), length=10**6), "the body has"),
        (_binary_request({"inputs": [tensor]}, image.tobytes(), length=0), "the body has"),
        ((good, {"Inference-Header-Content-Length": "\u00b2"}), "byte count"),
        (
            _binary_request(
                {"inputs": [{**tensor, "parameters": {"binary_data_size": "784"}}]}, image.tobytes()
            ),
            "byte count",
        ),
        (
            _binary_request(
                {"inputs": [tensor], "outputs": [{"name": "classes", "parameters": {"binary_data": 1}}]},
                image.tobytes(),
            ),
            "true or false",
        ),
        (_binary_request({"inputs": [tensor], "parameters": []}, image.tobytes()), "parameters"),
    ]
    for (body, headers), fragment in cases:
        status, answer, _ = http_call(url, body, headers=headers)
        assert status == 400 and fragment in answer["error"], (fragment, answer)
