"""KServe's own Python SDK against a running server: run by the KServe virtualenv's Python
(``.venv-kserve``, requirements-kserve.txt), never imported by the tests (it needs kserve, which pins
protobuf below 7).

    .venv-kserve/bin/python tests/support/kserve_client.py REST_URL GRPC_TARGET MODEL IMAGES.npy

Prints one JSON line: for REST (``InferenceRESTClient``, protocol v2) and gRPC (``InferenceGRPCClient``,
``inference.GRPCInferenceService``) the server's live and ready answers, the model's readiness, and the
classes and model version the model answered for the images (uint8 [N, 28, 28], sent as FP32 pixels).
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: str, images: np.ndarray, binary: bool) -> InferRequest:
    tensor = InferInput(name="images", shape=list(images.shape), datatype="FP32")
    tensor.set_data_from_numpy(images.astype(np.float32), binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor])


CHUNK = 500  # images per request (the server's max_images_per_request is 1024)


def classes(response) -> tuple[list[int], str | None]:
    outputs = {output.name: output for output in response.outputs}
    probabilities = outputs["probabilities"].as_numpy()
    return [int(c) for c in np.argmax(probabilities, axis=-1)], response.model_version


async def classify(infer, model: str, images: np.ndarray) -> tuple[list[int], str | None]:
    """Classes of all ``images``, CHUNK per call; the version is the last call's."""
    found: list[int] = []
    version = None
    for start in range(0, len(images), CHUNK):
        chunk, version = classes(await infer(request(model, images[start : start + CHUNK], binary=False)))
        found.extend(chunk)
    return found, version


async def rest(url: str, model: str, images: np.ndarray) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        answer = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
        # The JSON form of the tensors: the v2 binary-data extension is not served on REST.
        answer["classes"], answer["model_version"] = await classify(
            lambda data: client.infer(url, data, model_name=model), model, images
        )
        return answer
    finally:
        await client.close()


async def grpc(target: str, model: str, images: np.ndarray) -> dict:
    client = InferenceGRPCClient(target, timeout=60)
    try:
        answer = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
        }
        answer["classes"], answer["model_version"] = await classify(client.infer, model, images)
        return answer
    finally:
        await client.close()


async def main(url: str, target: str, model: str, images_file: str) -> None:
    images = np.load(images_file)
    result = {"rest": await rest(url, model, images), "grpc": await grpc(target, model, images)}
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
