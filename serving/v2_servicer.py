"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``): protobuf <-> arrays only.

Model-repository RPCs (RepositoryModelLoad/Unload) are not served (UNIMPLEMENTED): versions come from the
repository poller. Outputs are returned as ``raw_output_contents`` (little-endian) when the request sent
raw inputs or an output asks for ``binary_data``, as typed ``contents`` otherwise.
"""

from __future__ import annotations

import grpc
import numpy as np

from digits.inference import grpc_predict_v2_pb2 as pb

from . import v2
from .dataplane import SERVER_NAME, DataPlane
from .errors import InvalidInput
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
        if len(request.inputs) != 1:
            raise InvalidInput(f"the request has {len(request.inputs)} inputs; send one, {v2.INPUT_NAME!r}")
        tensor = request.inputs[0]
        count = v2.check_input_header(tensor.name, tensor.datatype, tensor.shape, self._plane.max_images)
        raw = len(request.raw_input_contents) > 0
        if raw:
            if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
                raise InvalidInput(
                    "raw_input_contents needs exactly one entry per input, and then no contents"
                )
            images = v2.images_from_raw(
                request.raw_input_contents[0], tensor.datatype, count, "raw_input_contents[0]"
            )
        elif tensor.datatype == "FP32":
            values = np.asarray(tensor.contents.fp32_contents, np.float32)
            images = v2.images_from_array(values, "FP32", count, "contents.fp32_contents")
        else:
            values = np.asarray(tensor.contents.uint_contents, np.int64)
            images = v2.images_from_array(values, "UINT8", count, "contents.uint_contents")
        wanted = v2.requested_outputs([output.name for output in request.outputs])
        binary = raw or any(
            output.parameters["binary_data"].bool_param
            for output in request.outputs
            if "binary_data" in output.parameters
        )
        probabilities, classes = await self._plane.predict(model, images)
        arrays = v2.output_arrays(probabilities, classes)
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        for name in wanted:
            array = arrays[name]
            output = response.outputs.add(name=name, datatype=v2.OUTPUT_DATATYPES[name], shape=array.shape)
            if binary:
                response.raw_output_contents.append(v2.little_endian_bytes(array))
            elif array.dtype == np.float32:
                output.contents.fp32_contents.extend(array.ravel().tolist())
            else:
                output.contents.int64_contents.extend(array.ravel().tolist())
        return response
