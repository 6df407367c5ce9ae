"""Open Inference Protocol v2 over gRPC: our generated stubs for every branch, and Triton's own client.

``tritonclient.grpc`` defines the same protobuf package (``inference``) as our generated code, so it
cannot be imported in this process (duplicate descriptors): it runs unchanged in a child process
(``tests/support/triton_client.py``), as any outside client would.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from digits.inference import grpc_predict_v2_pb2 as pb
from digits.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from digits.v1 import digits_pb2, digits_pb2_grpc
from tests.support.serving import publish_copy, triton_client_answer, wait_serving

OK, INVALID, NOT_FOUND, UNAVAILABLE, UNIMPLEMENTED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
)


def stub(target: str) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))


def infer_request(
    images: np.ndarray, datatype: str = "FP32", raw: bool = True, **fields
) -> pb.ModelInferRequest:
    shape = fields.pop("shape", list(images.shape))
    request = pb.ModelInferRequest(model_name=fields.pop("model_name", "mnist"), **fields)
    tensor = request.inputs.add(name="images", datatype=datatype, shape=shape)
    array = images.astype(np.float32 if datatype == "FP32" else np.uint8)
    if raw:
        request.raw_input_contents.append(array.tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    else:
        tensor.contents.uint_contents.extend(array.ravel().tolist())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    arrays = {}
    for index, output in enumerate(response.outputs):
        dtype = np.float32 if output.datatype == "FP32" else np.int64
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[index], dtype)
        else:
            values = np.asarray(
                output.contents.fp32_contents
                if output.datatype == "FP32"
                else output.contents.int64_contents,
                dtype,
            )
        arrays[output.name] = values.reshape(tuple(output.shape))
    return arrays


def code_of(method, request) -> tuple[grpc.StatusCode, str]:
    try:
        method(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return OK, ""


def test_every_input_form_gives_the_digits_v1_answer(served, test_images):
    images, labels = test_images
    batch = images[:64]
    v1 = digits_pb2_grpc.DigitClassifierStub(grpc.insecure_channel(served.target)).Predict(
        digits_pb2.PredictRequest(uint8_pixels=batch.tobytes()), timeout=30
    )
    expected = np.asarray(v1.probabilities, np.float32).reshape(-1, 10)
    v2 = stub(served.target)
    forms = [
        infer_request(batch, "FP32", raw=True),
        infer_request(batch, "FP32", raw=False),
        infer_request(batch, "UINT8", raw=True),
        infer_request(batch, "UINT8", raw=False),
        infer_request(batch.reshape(-1, 784), "UINT8", raw=True),
        infer_request(batch, "FP32", raw=True, model_version="1", id="request-7"),
    ]
    for request in forms:
        response = v2.ModelInfer(request, timeout=30)
        assert (response.model_name, response.model_version) == ("mnist", "1")
        assert response.id == request.id
        # Raw inputs get raw outputs (as Triton answers its clients); typed inputs get typed contents.
        assert bool(response.raw_output_contents) == bool(request.raw_input_contents)
        outputs = outputs_of(response)
        assert outputs["probabilities"].shape == (64, 10) and outputs["classes"].shape == (64,)
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-6)
        np.testing.assert_array_equal(outputs["classes"], v1.digits)
    assert np.mean(outputs["classes"] == labels[:64]) > 0.8


def test_requested_outputs_and_binary_data_parameter(served, test_images):
    images, _ = test_images
    v2 = stub(served.target)
    request = infer_request(images[:3], raw=False)
    request.outputs.add(name="classes")
    response = v2.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["classes"] and not response.raw_output_contents
    assert list(response.outputs[0].shape) == [3]
    wanted = request.outputs[0]
    wanted.parameters["binary_data"].bool_param = True
    response = v2.ModelInfer(request, timeout=30)
    assert len(response.raw_output_contents) == 1
    assert outputs_of(response)["classes"].shape == (3,)


def test_health_and_metadata_rpcs(served):
    v2 = stub(served.target)
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name="mnist", version="1"), timeout=10).ready
    assert not v2.ModelReady(pb.ModelReadyRequest(name="mnist", version="9"), timeout=10).ready
    assert code_of(v2.ModelReady, pb.ModelReadyRequest(name="fashion"))[0] == NOT_FOUND
    server = v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert server.name == "digits-serving" and server.version
    meta = v2.ModelMetadata(pb.ModelMetadataRequest(name="mnist"), timeout=10)
    assert (meta.name, list(meta.versions), meta.platform) == ("mnist", ["1"], "tensorflow_savedmodel")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("images", "FP32", [-1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 10]),
        ("classes", "INT64", [-1]),
    ]
    assert (
        code_of(v2.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="mnist"))[0] == UNIMPLEMENTED
    )


def test_bad_requests_get_the_status_table_codes(start_server, exported, tmp_path):
    root = tmp_path / "models"
    publish_copy(exported["trained"], root)
    server = start_server(model_root=root, max_images_per_request=8, max_queued_images=8)
    wait_serving(server.target)
    v2 = stub(server.target)
    good = np.zeros((2, 28, 28), np.uint8)
    two_inputs = infer_request(good)
    two_inputs.inputs.add(name="extra", datatype="FP32", shape=[1])
    both_forms = infer_request(good, raw=True)
    both_forms.inputs[0].contents.fp32_contents.append(1.0)
    cases = [
        ("wrong datatype", infer_request(good, "FP64"), INVALID, "datatype"),
        ("wrong shape", infer_request(good, shape=[2, 28, 27]), INVALID, "shape"),
        ("wrong rank", infer_request(good, shape=[2, 784, 1]), INVALID, "shape"),
        ("byte size", infer_request(good, shape=[3, 28, 28]), INVALID, "bytes"),
        ("value count", infer_request(good, raw=False, shape=[3, 28, 28]), INVALID, "values"),
        ("too many images", infer_request(np.zeros((9, 28, 28))), INVALID, "limit"),
        ("empty batch", infer_request(np.zeros((0, 28, 28))), INVALID, "empty"),
        ("out of range", infer_request(np.full((1, 28, 28), 300.0)), INVALID, "values in"),
        ("NaN", infer_request(np.full((1, 28, 28), np.nan)), INVALID, "NaN"),
        ("no inputs", pb.ModelInferRequest(model_name="mnist"), INVALID, "inputs"),
        ("two inputs", two_inputs, INVALID, "inputs"),
        ("raw and typed", both_forms, INVALID, "raw_input_contents"),
        ("input name", _renamed(infer_request(good), "pixels"), INVALID, "'pixels'"),
        ("unknown output", _with_output(infer_request(good), "logits"), INVALID, "logits"),
        ("bad version", infer_request(good, model_version="latest"), INVALID, "model_version"),
        ("unknown model", infer_request(good, model_name="fashion"), NOT_FOUND, "fashion"),
        ("unknown version", infer_request(good, model_version="4"), NOT_FOUND, "version 4"),
    ]
    for label, request, expected, fragment in cases:
        code, details = code_of(v2.ModelInfer, request)
        assert code == expected, (label, code, details)
        assert fragment in details, (label, details)
    assert code_of(v2.ModelMetadata, pb.ModelMetadataRequest(name="fashion"))[0] == NOT_FOUND
    # Not valid protobuf at all: INVALID_ARGUMENT, as for the other APIs.
    channel = grpc.insecure_channel(server.target)
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == INVALID


def test_unavailable_before_a_model_loads(start_server, tmp_path):
    server = start_server(model_root=tmp_path / "empty")
    v2 = stub(server.target)
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert not v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert not v2.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready
    assert code_of(v2.ModelInfer, infer_request(np.zeros((1, 28, 28))))[0] == UNAVAILABLE


def _renamed(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.inputs[0].name = name
    return request


def _with_output(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def test_tritonclient_grpc_works_unchanged(served, test_images, tmp_path):
    """Triton's Python gRPC client, as a KServe/Triton user would call us (in its own process)."""
    images, labels = test_images
    answer = triton_client_answer(served.target, images[:32], tmp_path)
    assert answer["live"] and answer["ready"] and answer["model_ready"]
    assert answer["metadata"]["inputs"][0] == {
        "name": "images",
        "datatype": "FP32",
        "shape": ["-1", "28", "28"],
    }
    for form in ("fp32", "uint8_flat"):
        classes = np.asarray(answer[form]["classes"])
        probabilities = np.asarray(answer[form]["probabilities"])
        assert answer[form]["model_version"] == "1"
        assert probabilities.shape == (32, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        assert np.mean(classes == labels[:32]) > 0.8
    np.testing.assert_array_equal(answer["fp32"]["classes"], answer["uint8_flat"]["classes"])
    assert answer["classes_only"] == ["classes"]
    assert answer["unknown_model_error"] and "fashion" in answer["unknown_model_error"]
