"""Runs Triton's own gRPC client (``tritonclient.grpc``) against a server and prints one JSON line.

Its own process: tritonclient's generated code and ours define the same protobuf package
(``inference``), which one process cannot hold twice. Usage: ``triton_client.py HOST:PORT IMAGES.npy``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def infer(client: triton.InferenceServerClient, array: np.ndarray, datatype: str, outputs=None) -> dict:
    tensor = triton.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    result = client.infer("mnist", [tensor], outputs=requested)
    response = result.get_response()
    answer = {"model_version": response.model_version, "names": [o.name for o in response.outputs]}
    for name in answer["names"]:
        answer[name] = result.as_numpy(name).tolist()
    return answer


def main(target: str, images_path: str) -> int:
    images = np.load(images_path)
    client = triton.InferenceServerClient(url=target)
    answer = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist"),
        "metadata": client.get_model_metadata("mnist", as_json=True),
        "fp32": infer(client, images.astype(np.float32), "FP32"),
        "uint8_flat": infer(client, images.reshape(len(images), 784).astype(np.uint8), "UINT8"),
        "classes_only": infer(client, images[:2].astype(np.float32), "FP32", ["classes"])["names"],
    }
    try:
        tensor = triton.InferInput("images", [1, 28, 28], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
        client.infer("fashion", [tensor])
        answer["unknown_model_error"] = None
    except InferenceServerException as exc:
        answer["unknown_model_error"] = f"{exc.status()}: {exc.message()}"
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
