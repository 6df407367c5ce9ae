"""TensorFlow Serving's API: the codec its gRPC servicer (``serving/tfs_servicer.py``) and its REST routes
(``serving/rest.py``) share.

Model spec and version checks, TensorProto <-> arrays, the SignatureDefMap of GetModelMetadata (built
here once for both transports), and the REST forms: ``POST /v1/models/<name>[/versions/<n>]:predict``
with ``instances`` (row) or ``inputs`` (columnar), model status and metadata.
"""

from __future__ import annotations

import re

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

import modelrepo

from .dataplane import DataPlane
from .errors import InvalidInput, ModelNotFound
from .jsonbody import numeric_array
from .model_store import LoadedModel
from .validation import PIXELS, check_range, check_shape
from .wire import parse_version, shown

OUTPUTS = (modelrepo.OUTPUT_PROBABILITIES, modelrepo.OUTPUT_CLASSES)
SIGNATURE_DEF_FIELD = "signature_def"
# REST: /v1/models/<name>[/versions/<n>][:verb] (the part after /v1/models/)
REST_TARGET = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?::(?P<verb>[A-Za-z]+))?$")
PATH_VERSION = "the version in the path"


def resolve_model(plane: DataPlane, name: str, version: int | None, signature_name: str) -> LoadedModel:
    """The model a TF Serving request (gRPC or REST) names; its signature must be ours (or empty)."""
    if version is not None and version <= 0:
        raise InvalidInput(f"model_spec.version must be positive, got {version}")
    if signature_name not in ("", modelrepo.SIGNATURE_NAME):
        raise InvalidInput(
            f"signature {shown(signature_name)} not found; the only signature is {modelrepo.SIGNATURE_NAME!r}"
        )
    return plane.model(name, version)


def spec_model(plane: DataPlane, spec: model_pb2.ModelSpec) -> LoadedModel:
    """The model a gRPC ``ModelSpec`` names."""
    if spec.WhichOneof("version_choice") == "version_label":
        raise InvalidInput(f"version labels are not supported (got {shown(spec.version_label)}); use version")
    version = spec.version.value if spec.HasField("version") else None
    return resolve_model(plane, spec.name, version, spec.signature_name)


def check_output_filter(names: list[str]) -> list[str]:
    wanted = names or list(OUTPUTS)
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise InvalidInput(
            f"output_filter names unknown outputs {shown(unknown)}; outputs are {list(OUTPUTS)}"
        )
    return wanted


def images_from_tensor(tensor: tensor_pb2.TensorProto, max_images: int) -> np.ndarray:
    """A DT_FLOAT TensorProto [N, 28, 28] (``tensor_content`` or ``float_val``) -> float32 images."""
    field = f"inputs[{modelrepo.INPUT_KEY!r}]"
    if tensor.dtype != types_pb2.DT_FLOAT:
        dtype = (
            types_pb2.DataType.Name(tensor.dtype)
            if tensor.dtype in types_pb2.DataType.values()
            else tensor.dtype
        )
        raise InvalidInput(f"{field} has dtype {dtype}; expected DT_FLOAT")
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"{field} has an unknown rank; expected shape [N, 28, 28]")
    count = check_shape([dim.size for dim in tensor.tensor_shape.dim], max_images, field)
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * PIXELS * 4:
            raise InvalidInput(
                f"{field} tensor_content has {len(tensor.tensor_content)} bytes; "
                f"shape [{count}, 28, 28] float32 needs {count * PIXELS * 4}"
            )
        values = np.frombuffer(tensor.tensor_content, "<f4")
    else:
        if len(tensor.float_val) != count * PIXELS:
            raise InvalidInput(
                f"{field} has {len(tensor.float_val)} float_val values; shape [{count}, 28, 28] "
                f"needs {count * PIXELS}"
            )
        values = np.asarray(tensor.float_val, np.float32)
    return check_range(values.reshape(count, *modelrepo.IMAGE_SHAPE), field)


def tensor_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def signature_def_map(model: LoadedModel) -> get_model_metadata_pb2.SignatureDefMap:
    """GetModelMetadata's ``signature_def`` field, for both transports."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def[modelrepo.SIGNATURE_NAME].CopyFrom(model.signature_def)
    return signatures


def output_arrays(probabilities: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs keyed by name, in the dtypes TF Serving answers (float32, int64)."""
    return {
        modelrepo.OUTPUT_PROBABILITIES: probabilities.astype(np.float32, copy=False),
        modelrepo.OUTPUT_CLASSES: classes.astype(np.int64, copy=False),
    }


# ---- REST ----
def rest_target(target: str, path: str) -> tuple[str, int | None]:
    """``<name>[/versions/<n>]:predict`` (after /v1/models/) -> (name, version)."""
    match = REST_TARGET.match(target)
    if match is None or match["verb"] is None:
        raise ModelNotFound(f"no TF Serving REST resource at POST {shown(path)}")
    if match["verb"] != "predict":
        raise InvalidInput(f"only :predict is served (got :{shown(match['verb'])})")
    version = match["version"]
    return match["name"], None if version is None else parse_version(version, PATH_VERSION)


def rest_path_version(version: str | None) -> int | None:
    return None if version is None else parse_version(version, PATH_VERSION)


def rest_signature(payload: dict) -> str:
    signature = payload.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidInput("'signature_name' must be a string")
    return signature


def rest_predict_images(payload: dict, max_images: int) -> tuple[np.ndarray, bool]:
    """A REST predict body -> (float32 images, row format?)."""
    if ("instances" in payload) == ("inputs" in payload):
        raise InvalidInput("send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    row = "instances" in payload
    data = payload["instances"] if row else payload["inputs"]
    if row:
        if not isinstance(data, list):
            raise InvalidInput("'instances' must be a list")
        if data and all(isinstance(item, dict) for item in data):
            if any(set(item) != {modelrepo.INPUT_KEY} for item in data):
                raise InvalidInput(f"each instance object must have exactly one key, {modelrepo.INPUT_KEY!r}")
            data = [item[modelrepo.INPUT_KEY] for item in data]
    elif isinstance(data, dict):
        if set(data) != {modelrepo.INPUT_KEY}:
            raise InvalidInput(f"'inputs' names {shown(sorted(data))}; expected [{modelrepo.INPUT_KEY!r}]")
        data = data[modelrepo.INPUT_KEY]
    field = "instances" if row else "inputs"
    array = numeric_array(data, field)
    check_shape(list(array.shape), max_images, field)
    return check_range(array.astype(np.float32, copy=False), field), row


def rest_predict_response(probabilities: np.ndarray, classes: np.ndarray, row: bool) -> dict:
    arrays = output_arrays(probabilities, classes)
    if row:
        return {"predictions": [{key: arrays[key][i] for key in OUTPUTS} for i in range(len(classes))]}
    return {"outputs": {key: arrays[key] for key in OUTPUTS}}


def rest_status(models: list[LoadedModel]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(model.version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for model in models
        ]
    }


def rest_metadata(model: LoadedModel) -> dict:
    signatures = json_format.MessageToDict(signature_def_map(model), preserving_proto_field_name=True)
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {SIGNATURE_DEF_FIELD: signatures},
    }
