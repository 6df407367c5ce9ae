"""TensorFlow Serving's PredictionService (Predict, GetModelMetadata) over the same store and batcher.

Existing TF Serving clients work unchanged: ``model_spec.name`` is the model folder, an optional
``model_spec.version``, signature ``serving_default``, input ``images`` as a float TensorProto [N, 28, 28].
Protobuf <-> arrays through the TF Serving codec (``serving/tfs.py``), which the REST routes share.
"""

from __future__ import annotations

import grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

import modelrepo

from . import tfs
from .dataplane import DataPlane
from .errors import InvalidInput
from .wire import shown


class TfsPredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Only Predict and GetModelMetadata are served; Classify, Regress, MultiInference are UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        model = tfs.spec_model(self._plane, request.model_spec)
        if list(request.inputs) != [modelrepo.INPUT_KEY]:
            raise InvalidInput(
                f"inputs are {shown(sorted(request.inputs))}; expected exactly [{modelrepo.INPUT_KEY!r}]"
            )
        wanted = tfs.check_output_filter(list(request.output_filter))
        images = tfs.images_from_tensor(request.inputs[modelrepo.INPUT_KEY], self._plane.max_images)
        probabilities, classes = await self._plane.predict(model, images)
        arrays = tfs.output_arrays(probabilities, classes)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = modelrepo.SIGNATURE_NAME
        dtypes = {
            modelrepo.OUTPUT_PROBABILITIES: types_pb2.DT_FLOAT,
            modelrepo.OUTPUT_CLASSES: types_pb2.DT_INT64,
        }
        for name in tfs.OUTPUTS:
            if name in wanted:
                response.outputs[name].CopyFrom(tfs.tensor_proto(arrays[name], dtypes[name]))
        return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != [tfs.SIGNATURE_DEF_FIELD]:
            raise InvalidInput(
                f"metadata_field is {shown(fields)}; "
                f"the only supported field is [{tfs.SIGNATURE_DEF_FIELD!r}]"
            )
        model = tfs.spec_model(self._plane, request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata[tfs.SIGNATURE_DEF_FIELD].Pack(tfs.signature_def_map(model))
        return response
