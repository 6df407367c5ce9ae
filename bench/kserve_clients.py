"""KServe's own SDK clients (``InferenceRESTClient`` v2, ``InferenceGRPCClient``) against a running server.

Runs in KServe's virtualenv (see bench/kserve_model.py):
``VENV/bin/python bench/kserve_clients.py HTTP_HOST:PORT GRPC_HOST:PORT``; prints one JSON line with each
client's classes for the same image, and exits non-zero if they disagree or a call fails.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(binary: bool) -> InferRequest:
    image = (np.arange(784) % 256).astype(np.float32).reshape(1, 28, 28)
    tensor = InferInput("images", [1, 28, 28], "FP32")
    tensor.set_data_from_numpy(image, binary_data=binary)
    return InferRequest(model_name="mnist", infer_inputs=[tensor], request_id="kserve-sdk")


async def main(http_target: str, grpc_target: str) -> int:
    answers = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", verify=False))
    for binary in (False, True):
        response = await rest.infer(f"http://{http_target}", _request(binary), model_name="mnist")
        outputs = {output.name: output.as_numpy() for output in response.outputs}
        answers[f"rest binary={binary}"] = outputs["classes"].tolist()
    await rest.close()
    grpc_client = InferenceGRPCClient(grpc_target)
    response = await grpc_client.infer(_request(False))
    answers["grpc"] = {output.name: output.as_numpy() for output in response.outputs}["classes"].tolist()
    await grpc_client.close()
    print(json.dumps(answers))
    return 0 if len({json.dumps(value) for value in answers.values()}) == 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
