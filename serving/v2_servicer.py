"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``): protobuf <-> arrays only.

Model-repository RPCs (RepositoryModelLoad/Unload) are not served (UNIMPLEMENTED): versions come from the
repository poller. Outputs are returned as ``raw_output_contents`` (little-endian) when the request sent
raw inputs or an output asks for ``binary_data``, as typed ``contents`` otherwise.
"""

from __future__ import annotations

import grpc

from digits.inference import grpc_predict_v2_pb2 as pb

from . import v2
from .dataplane import SERVER_NAME, DataPlane
from .wire import parse_version


class V2Servicer:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=self._plane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        version = parse_version(request.version, "version")
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=v2.server_version(), extensions=v2.EXTENSIONS
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        model = self._plane.model(request.name, parse_version(request.version, "version"))
        info = v2.model_metadata(model, self._plane.versions(model.name))
        return pb.ModelMetadataResponse(
            name=info["name"],
            versions=info["versions"],
            platform=info["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in info["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in info["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        model = self._plane.model(request.model_name, parse_version(request.model_version, "model_version"))
        decoded = v2.grpc_infer_request(request, self._plane.max_images)
        probabilities, classes = await self._plane.predict(model, decoded.images)
        return v2.grpc_infer_response(model, request.id, decoded, probabilities, classes)
