"""digits.v1.DigitClassifier: converts its messages to arrays and back; the work happens below."""

from __future__ import annotations

import json
import math

import grpc
import numpy as np

import modelrepo
from digits.v1 import digits_pb2, digits_pb2_grpc

from .dataplane import DataPlane
from .errors import InvalidInput
from .model_store import LoadedModel
from .validation import images_from_floats, images_from_uint8


class DigitsServicer(digits_pb2_grpc.DigitClassifierServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Predict(
        self, request: digits_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> digits_pb2.PredictResponse:
        if request.model_version < 0:
            raise InvalidInput(f"model_version must be >= 0 (0: newest), got {request.model_version}")
        model = self._plane.model(request.model_name, request.model_version or None)
        kind = request.WhichOneof("pixels")
        if kind == "uint8_pixels":
            images = images_from_uint8(request.uint8_pixels, request.num_images, self._plane.max_images)
        elif kind == "float_pixels":
            values = np.asarray(request.float_pixels.values, np.float32)
            images = images_from_floats(values, request.num_images, self._plane.max_images, "float_pixels")
        else:
            raise InvalidInput("the request has no pixels: set uint8_pixels or float_pixels")
        probabilities, classes = await self._plane.predict(model, images)
        return digits_pb2.PredictResponse(
            model_name=model.name,
            model_version=model.version,
            digits=classes.tolist(),
            confidences=probabilities.max(axis=1).tolist(),
            probabilities=probabilities.ravel().tolist(),
        )

    async def GetModelMetadata(
        self, request: digits_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> digits_pb2.GetModelMetadataResponse:
        latest = self._plane.model(request.model_name)
        contract = latest.metadata.input
        return digits_pb2.GetModelMetadataResponse(
            model_name=latest.name,
            default_version=latest.version,
            versions=[_version_info(loaded) for loaded in self._plane.versions(latest.name)],
            input=digits_pb2.InputContract(
                signature_name=modelrepo.SIGNATURE_NAME,
                input_key=modelrepo.INPUT_KEY,
                shape=[-1, *modelrepo.IMAGE_SHAPE],
                dtype=modelrepo.INPUT_DTYPE,
                min_value=contract.value_range[0],
                max_value=contract.value_range[1],
                max_images_per_request=self._plane.max_images,
                description=contract.description,
            ),
        )


def _version_info(loaded: LoadedModel) -> digits_pb2.ModelVersion:
    metadata = loaded.metadata
    return digits_pb2.ModelVersion(
        version=loaded.version,
        val_accuracy=math.nan if metadata.val_accuracy is None else metadata.val_accuracy,
        test_accuracy=math.nan if metadata.test_accuracy is None else metadata.test_accuracy,
        created_at=metadata.created_at.isoformat(),
        tuner=metadata.tuner,
        hyperparameters_json=json.dumps(modelrepo.to_jsonable(metadata.hyperparameters), sort_keys=True),
    )
