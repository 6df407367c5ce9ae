"""TensorFlow Serving's PredictionService (Predict, GetModelMetadata) over the same store and batcher.

Existing TF Serving clients work unchanged: ``model_spec.name`` is the model folder, an optional
``model_spec.version``, signature ``serving_default``, input ``images`` as a float TensorProto [N, 28, 28].
"""

from __future__ import annotations

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

import modelrepo

from .dataplane import DataPlane
from .errors import InvalidInput
from .model_store import LoadedModel
from .validation import PIXELS, check_range, check_shape
from .wire import shown

OUTPUTS = (modelrepo.OUTPUT_PROBABILITIES, modelrepo.OUTPUT_CLASSES)
SIGNATURE_DEF_FIELD = "signature_def"


class TfsPredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Only Predict and GetModelMetadata are served; Classify, Regress, MultiInference are UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def _model(self, spec: model_pb2.ModelSpec) -> LoadedModel:
        if spec.WhichOneof("version_choice") == "version_label":
            raise InvalidInput(
                f"version labels are not supported (got {shown(spec.version_label)}); use version"
            )
        version = spec.version.value if spec.HasField("version") else None
        return resolve_model(self._plane, spec.name, version, spec.signature_name)

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        model = self._model(request.model_spec)
        if list(request.inputs) != [modelrepo.INPUT_KEY]:
            raise InvalidInput(
                f"inputs are {shown(sorted(request.inputs))}; expected exactly [{modelrepo.INPUT_KEY!r}]"
            )
        wanted = list(request.output_filter) or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InvalidInput(
                f"output_filter names unknown outputs {shown(unknown)}; outputs are {list(OUTPUTS)}"
            )
        images = self._images(request.inputs[modelrepo.INPUT_KEY])
        probabilities, classes = await self._plane.predict(model, images)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = modelrepo.SIGNATURE_NAME
        if modelrepo.OUTPUT_PROBABILITIES in wanted:
            response.outputs[modelrepo.OUTPUT_PROBABILITIES].CopyFrom(
                _tensor(probabilities.astype(np.float32, copy=False), types_pb2.DT_FLOAT)
            )
        if modelrepo.OUTPUT_CLASSES in wanted:
            response.outputs[modelrepo.OUTPUT_CLASSES].CopyFrom(
                _tensor(classes.astype(np.int64, copy=False), types_pb2.DT_INT64)
            )
        return response

    def _images(self, tensor: tensor_pb2.TensorProto) -> np.ndarray:
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
        count = check_shape([dim.size for dim in tensor.tensor_shape.dim], self._plane.max_images, field)
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

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != [SIGNATURE_DEF_FIELD]:
            raise InvalidInput(
                f"metadata_field is {shown(fields)}; the only supported field is [{SIGNATURE_DEF_FIELD!r}]"
            )
        model = self._model(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[modelrepo.SIGNATURE_NAME].CopyFrom(model.signature_def)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response


def resolve_model(plane: DataPlane, name: str, version: int | None, signature_name: str) -> LoadedModel:
    """The model a TF Serving request (gRPC or REST) names; its signature must be ours (or empty)."""
    if version is not None and version <= 0:
        raise InvalidInput(f"model_spec.version must be positive, got {version}")
    if signature_name not in ("", modelrepo.SIGNATURE_NAME):
        raise InvalidInput(
            f"signature {shown(signature_name)} not found; the only signature is {modelrepo.SIGNATURE_NAME!r}"
        )
    return plane.model(name, version)


def _tensor(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )
