"""Hypothesis-generated malformed requests: only the expected status codes, and the server stays up."""

from __future__ import annotations

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from digits.v1 import digits_pb2, digits_pb2_grpc

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PIXELS = 784

sizes = st.sampled_from([0, 1, PIXELS - 1, PIXELS, PIXELS + 1, 2 * PIXELS, 3 * PIXELS - 5])
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
names = st.sampled_from(["", "mnist", "other", "../mnist", "m" * 300])


@st.composite
def digits_requests(draw) -> digits_pb2.PredictRequest:
    request = digits_pb2.PredictRequest(
        model_name=draw(names),
        model_version=draw(st.integers(-3, 3)),
        num_images=draw(st.integers(0, 4) | st.integers(0, 2**32 - 1)),
    )
    kind = draw(st.sampled_from(["none", "bytes", "floats"]))
    if kind == "bytes":
        request.uint8_pixels = draw(st.binary(min_size=0, max_size=8) | sizes.map(bytes))
    elif kind == "floats":
        count = draw(sizes)
        fill = draw(floats)
        values = np.full(count, fill, np.float32)
        for index, value in draw(st.lists(st.tuples(st.integers(0, max(count - 1, 0)), floats), max_size=3)):
            if count:
                values[index] = value
        request.float_pixels.values.extend(values.tolist())
    return request


@st.composite
def tfs_requests(draw) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(names)
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(-2, 3))
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "other"]))
    dims = draw(st.lists(st.sampled_from([-1, 0, 1, 2, 27, 28, 784]), max_size=4))
    tensor = tensor_pb2.TensorProto(
        dtype=draw(st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_UINT8, 0, 999])),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims],
            unknown_rank=draw(st.booleans()),
        ),
    )
    if draw(st.booleans()):
        tensor.tensor_content = draw(st.binary(max_size=16) | sizes.map(lambda n: bytes(4 * n)))
    else:
        tensor.float_val.extend([draw(floats)] * draw(sizes))
    request.inputs[draw(st.sampled_from(["images", "x"]))].CopyFrom(tensor)
    request.output_filter.extend(
        draw(st.lists(st.sampled_from(["classes", "probabilities", "logits"]), max_size=2))
    )
    return request


def _code(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.details() and "Traceback" not in exc.details()
        return exc.code()
    return grpc.StatusCode.OK


def _still_up(channel: grpc.Channel) -> None:
    stub = digits_pb2_grpc.DigitClassifierStub(channel)
    response = stub.Predict(digits_pb2.PredictRequest(uint8_pixels=bytes(2 * PIXELS)), timeout=30)
    assert len(response.digits) == 2


def test_fuzz_digits_predict(served):
    channel = grpc.insecure_channel(served.target)
    stub = digits_pb2_grpc.DigitClassifierStub(channel)
    raw = channel.unary_unary("/digits.v1.DigitClassifier/Predict")

    @FUZZ
    @given(request=digits_requests(), garbage=st.binary(max_size=64))
    def check(request, garbage):
        assert _code(stub.Predict, request) in ALLOWED
        assert _code(raw, garbage) in ALLOWED

    check()
    _still_up(channel)


def test_fuzz_tf_serving_predict(served):
    channel = grpc.insecure_channel(served.target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    @FUZZ
    @given(request=tfs_requests())
    def check(request):
        assert _code(stub.Predict, request) in ALLOWED

    check()
    _still_up(channel)
