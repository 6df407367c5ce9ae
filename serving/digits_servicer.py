"""digits.v1.DigitClassifier over gRPC: messages <-> arrays through the digits.v1 codec
(``serving/digits_v1.py``); the work happens in the data plane."""

from __future__ import annotations

import grpc

from digits.v1 import digits_pb2, digits_pb2_grpc

from . import digits_v1
from .dataplane import DataPlane


class DigitsServicer(digits_pb2_grpc.DigitClassifierServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Predict(
        self, request: digits_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> digits_pb2.PredictResponse:
        model = self._plane.model(request.model_name, digits_v1.requested_version(request.model_version))
        images = digits_v1.images(request, self._plane.max_images)
        probabilities, classes = await self._plane.predict(model, images)
        return digits_v1.predict_response(model, probabilities, classes)

    async def GetModelMetadata(
        self, request: digits_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> digits_pb2.GetModelMetadataResponse:
        latest = self._plane.model(request.model_name)
        return digits_v1.metadata_response(latest, self._plane.versions(latest.name), self._plane.max_images)
