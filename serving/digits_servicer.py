"""digits.v1.DigitClassifier: converts its messages to arrays and back; the work happens below."""

from __future__ import annotations

import json
import math

import grpc
import numpy as np

import modelrepo
from digits.v1 import digits_pb2, digits_pb2_grpc

from .batcher import Batcher
from .errors import InvalidInput
from .model_store import LoadedModel, ModelStore
from .validation import images_from_floats, images_from_uint8


class DigitsServicer(digits_pb2_grpc.DigitClassifierServicer):
    def __init__(self, store: ModelStore, batcher: Batcher, default_model: str, max_images: int) -> None:
        self._store = store
        self._batcher = batcher
        self._default_model = default_model
        self._max_images = max_images

    async def Predict(
        self, request: digits_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> digits_pb2.PredictResponse:
        if request.model_version < 0:
            raise InvalidInput(f"model_version must be >= 0 (0: newest), got {request.model_version}")
        model = self._store.get(request.model_name or self._default_model, request.model_version or None)
        kind = request.WhichOneof("pixels")
        if kind == "uint8_pixels":
            images = images_from_uint8(request.uint8_pixels, request.num_images, self._max_images)
        elif kind == "float_pixels":
            values = np.asarray(request.float_pixels.values, np.float32)
            images = images_from_floats(values, request.num_images, self._max_images, "float_pixels")
        else:
            raise InvalidInput("the request has no pixels: set uint8_pixels or float_pixels")
        probabilities, classes = await self._batcher.predict(model, images)
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
        latest = self._store.get(request.model_name or self._default_model)
        contract = latest.metadata.input
        return digits_pb2.GetModelMetadataResponse(
            model_name=latest.name,
            default_version=latest.version,
            versions=[_version_info(loaded) for loaded in self._store.versions(latest.name)],
            input=digits_pb2.InputContract(
                signature_name=modelrepo.SIGNATURE_NAME,
                input_key=modelrepo.INPUT_KEY,
                shape=[-1, *modelrepo.IMAGE_SHAPE],
                dtype=modelrepo.INPUT_DTYPE,
                min_value=contract.value_range[0],
                max_value=contract.value_range[1],
                max_images_per_request=self._max_images,
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
