"""Open Inference Protocol v2 (KServe, Triton, MLServer): the codec both transports share.

Input: one tensor named ``images``, datatype ``FP32`` or ``UINT8``, shape ``[N, 28, 28]`` or ``[N, 784]``,
raw pixels 0..255. Outputs: ``probabilities`` FP32 ``[N, 10]`` and ``classes`` INT64 ``[N]``; a request may
ask for a subset. ``serving/v2_servicer.py`` (gRPC) and ``serving/rest.py`` (HTTP) call the functions
below; the REST request and response forms, with the binary tensor data extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``, ``binary_data_output``, as
Triton and KServe define it), are decoded and encoded here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata

import numpy as np

import modelrepo
from digits.inference import grpc_predict_v2_pb2 as pb

from .errors import InvalidInput
from .jsonbody import numeric_array
from .model_store import LoadedModel
from .validation import COLS, PIXELS, ROWS, check_count, check_range
from .wire import shown

INPUT_NAME = modelrepo.INPUT_KEY
NUM_CLASSES = modelrepo.NUM_CLASSES
OUTPUT_NAMES = (modelrepo.OUTPUT_PROBABILITIES, modelrepo.OUTPUT_CLASSES)
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_DATATYPES = {modelrepo.OUTPUT_PROBABILITIES: "FP32", modelrepo.OUTPUT_CLASSES: "INT64"}
PLATFORM = "tensorflow_savedmodel"  # Triton's name for the platform
EXTENSIONS = ["binary_tensor_data"]  # reported by ServerMetadata, as Triton does
BINARY_HEADER = b"inference-header-content-length"  # the JSON part's length, before the binary part


def server_version() -> str:
    try:
        return package_metadata.version("mnist-mlp-platform")
    except package_metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "0"


def check_input_header(name: str, datatype: str, shape: Sequence[int], max_images: int) -> int:
    """Validate an input tensor's name, datatype and shape; returns N."""
    if name != INPUT_NAME:
        raise InvalidInput(f"input {shown(name)} is unknown; the model has one input, {INPUT_NAME!r}")
    if datatype not in INPUT_DATATYPES:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {shown(datatype)}; expected one of {sorted(INPUT_DATATYPES)}"
        )
    shape = list(shape)
    if not (len(shape) == 3 and shape[1:] == [ROWS, COLS]) and not (len(shape) == 2 and shape[1] == PIXELS):
        raise InvalidInput(
            f"input {INPUT_NAME!r} has shape {shown(shape)}; expected [N, {ROWS}, {COLS}] or [N, {PIXELS}]"
        )
    check_count(shape[0], max_images)
    return shape[0]


def images_from_array(values: np.ndarray, datatype: str, count: int, field: str) -> np.ndarray:
    """Typed values (any shape, N*784 elements) -> float32 [N, 28, 28] in range."""
    if values.size != count * PIXELS:
        raise InvalidInput(
            f"{field} has {values.size} values; shape [{count}, ...] of 28x28 images needs {count * PIXELS}"
        )
    images = values.reshape(count, ROWS, COLS)
    if values.dtype == np.uint8:  # raw bytes or whole JSON pixels: in range by construction, either datatype
        return images.astype(np.float32)
    if datatype == "UINT8":
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise InvalidInput(f"{field} is UINT8 but holds fractional values")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput(f"{field} is UINT8 but holds values outside 0..255")
        return images.astype(np.float32)  # whole numbers in 0..255: finite and in range, no check_range
    return check_range(images.astype(np.float32, copy=False), field)


def images_from_raw(data: bytes, datatype: str, count: int, field: str) -> np.ndarray:
    """Little-endian raw bytes (``raw_input_contents``, the binary-data extension) -> float32 images."""
    dtype = INPUT_DATATYPES[datatype]
    needed = count * PIXELS * dtype.itemsize
    if len(data) != needed:
        raise InvalidInput(f"{field} has {len(data)} bytes; {count} images of 28x28 {datatype} need {needed}")
    return images_from_array(np.frombuffer(data, dtype), datatype, count, field)


def requested_outputs(names: Sequence[str]) -> list[str]:
    """The outputs to return, in model order (all when none are named)."""
    if not names:
        return list(OUTPUT_NAMES)
    unknown = sorted(set(names) - set(OUTPUT_NAMES))
    if unknown:
        raise InvalidInput(
            f"requested outputs {shown(unknown)} are unknown; outputs are {list(OUTPUT_NAMES)}"
        )
    return [name for name in OUTPUT_NAMES if name in names]


def output_arrays(probabilities: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    return {
        modelrepo.OUTPUT_PROBABILITIES: probabilities.astype(np.float32, copy=False),
        modelrepo.OUTPUT_CLASSES: classes.astype(np.int64, copy=False),
    }


def model_metadata(model: LoadedModel, versions: Sequence[LoadedModel]) -> dict:
    """The v2 model metadata (REST JSON shape; the gRPC servicer copies it into its message)."""
    return {
        "name": model.name,
        "versions": [str(loaded.version) for loaded in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, ROWS, COLS]}],
        "outputs": [
            {
                "name": modelrepo.OUTPUT_PROBABILITIES,
                "datatype": "FP32",
                "shape": [-1, modelrepo.NUM_CLASSES],
            },
            {"name": modelrepo.OUTPUT_CLASSES, "datatype": "INT64", "shape": [-1]},
        ],
    }


@dataclass(slots=True)
class RestInfer:
    """A decoded v2 REST infer request."""

    images: np.ndarray  # float32 [N, 28, 28]
    outputs: list[str]  # in model order
    binary: frozenset[str]  # outputs to return as binary data
    id: str | None


def split_binary_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON part, binary part) of a body; without the header the whole body is JSON."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 12):
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a byte count, got {shown(header_length)}"
        )
    length = int(header_length)
    if not 0 < length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _parameters(item: dict, where: str) -> dict:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"the 'parameters' of {where} must be an object")
    return parameters


def _flag(parameters: dict, name: str, where: str) -> bool | None:
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"parameter {name!r} of {where} must be true or false")
    return value


def rest_infer_request(payload: dict, binary: memoryview, max_images: int) -> RestInfer:
    """A v2 REST infer request (JSON object and the bytes after it) -> images and what to answer."""
    request_id = payload.get("id")
    if "id" in payload and not isinstance(request_id, str):  # checked before any str() or inference
        raise InvalidInput("'id' must be a string (the v2 protocol's request identifier)")
    binary_output = _flag(_parameters(payload, "the request"), "binary_data_output", "the request")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"'inputs' must be a list of exactly one tensor object, {INPUT_NAME!r}")
    tensor = inputs[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput("the input tensor needs a string 'name' and a string 'datatype'")
    if not isinstance(shape, list) or not all(type(dim) is int for dim in shape):
        raise InvalidInput("the input tensor's 'shape' must be a list of integers")
    size = _parameters(tensor, "the input").get("binary_data_size")
    count = check_input_header(name, datatype, shape, max_images)
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput("parameter 'binary_data_size' of the input must be a byte count")
        if "data" in tensor:
            raise InvalidInput("the input has both 'data' and 'binary_data_size'; send one")
        if size != len(binary):
            raise InvalidInput(
                f"the input's binary_data_size is {size}, but {len(binary)} bytes follow the JSON header"
            )
        images = images_from_raw(binary, datatype, count, "the input's binary data")
    else:
        if len(binary):
            raise InvalidInput(
                f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size"
            )
        if "data" not in tensor:
            raise InvalidInput("the input tensor has no 'data' and no 'binary_data_size' parameter")
        images = images_from_array(numeric_array(tensor["data"], "data"), datatype, count, "data")
    outputs = payload.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidInput("'outputs' must be a list of objects with a string 'name'")
    wanted = requested_outputs([o["name"] for o in outputs])
    binary_names = set(wanted) if binary_output else set()
    for output in outputs:
        flag = _flag(_parameters(output, "an output"), "binary_data", "an output")
        if flag is not None:  # an output's own choice wins over binary_data_output
            (binary_names.add if flag else binary_names.discard)(output["name"])
    return RestInfer(images, wanted, frozenset(binary_names), request_id)


def rest_infer_response(
    model: LoadedModel, request: RestInfer, probabilities: np.ndarray, classes: np.ndarray
) -> tuple[dict, list[bytes]]:
    """The response object and, in output order, the binary parts of outputs sent as binary data."""
    arrays = output_arrays(probabilities, classes)
    response: dict = {"model_name": model.name, "model_version": str(model.version)}
    if request.id is not None:
        response["id"] = request.id
    outputs, blobs = [], []
    for name in request.outputs:
        array = arrays[name]
        output = {"name": name, "datatype": OUTPUT_DATATYPES[name], "shape": list(array.shape)}
        if name in request.binary:
            blob = little_endian_bytes(array)
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = array.ravel()
        outputs.append(output)
    response["outputs"] = outputs
    return response, blobs


def little_endian_bytes(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


# ---- gRPC ----
@dataclass(slots=True)
class GrpcInfer:
    """A decoded v2 gRPC ModelInfer request."""

    images: np.ndarray  # float32 [N, 28, 28]
    outputs: list[str]  # in model order
    binary: bool  # answer in raw_output_contents


def grpc_infer_request(request: pb.ModelInferRequest, max_images: int) -> GrpcInfer:
    """Inputs from typed ``contents`` or ``raw_input_contents``; raw input (or an output asking for
    ``binary_data``) gets raw outputs, as Triton answers its clients."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"the request has {len(request.inputs)} inputs; send one, {INPUT_NAME!r}")
    tensor = request.inputs[0]
    count = check_input_header(tensor.name, tensor.datatype, tensor.shape, max_images)
    raw = len(request.raw_input_contents) > 0
    if raw:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidInput("raw_input_contents needs exactly one entry per input, and then no contents")
        images = images_from_raw(
            request.raw_input_contents[0], tensor.datatype, count, "raw_input_contents[0]"
        )
    elif tensor.datatype == "FP32":
        values = np.asarray(tensor.contents.fp32_contents, np.float32)
        images = images_from_array(values, "FP32", count, "contents.fp32_contents")
    else:
        values = np.asarray(tensor.contents.uint_contents, np.int64)
        images = images_from_array(values, "UINT8", count, "contents.uint_contents")
    wanted = requested_outputs([output.name for output in request.outputs])
    binary = raw or any(
        output.parameters["binary_data"].bool_param
        for output in request.outputs
        if "binary_data" in output.parameters
    )
    return GrpcInfer(images, wanted, binary)


def grpc_infer_response(
    model: LoadedModel, request_id: str, request: GrpcInfer, probabilities: np.ndarray, classes: np.ndarray
) -> pb.ModelInferResponse:
    arrays = output_arrays(probabilities, classes)
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request_id)
    for name in request.outputs:
        array = arrays[name]
        output = response.outputs.add(name=name, datatype=OUTPUT_DATATYPES[name], shape=array.shape)
        if request.binary:
            response.raw_output_contents.append(little_endian_bytes(array))
        elif array.dtype == np.float32:
            output.contents.fp32_contents.extend(array.ravel().tolist())
        else:
            output.contents.int64_contents.extend(array.ravel().tolist())
    return response
