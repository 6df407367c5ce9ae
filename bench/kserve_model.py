"""KServe 0.21.0 ``ModelServer`` with a custom ``kserve.Model`` over our SavedModel: a peer in
bench/serve_bench.py (not our server).

Runs inside KServe's own virtualenv (its pins differ from ours), e.g.
``python3.11 -m venv VENV && VENV/bin/pip install kserve==0.21.0 tensorflow-cpu==2.21.0``;
``serve_bench.py --kserve VENV/bin/python`` starts it as
``VENV/bin/python bench/kserve_model.py --model_dir DIR --http_port N --grpc_port M``. It serves v2 REST
and v2 gRPC (KServe's defaults: one uvicorn worker, gRPC on), with per-request latency logging off. Same
TensorFlow thread settings as our server (one intra-op and one inter-op thread).
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class SavedModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started in this process
            pass
        self._function = tf.saved_model.load(self.model_dir).signatures["serving_default"]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, 28, 28)
        result = self._function(images=tf.convert_to_tensor(images))
        outputs = []
        for name, datatype in (("probabilities", "FP32"), ("classes", "INT64")):
            array = result[name].numpy()
            output = InferOutput(name, list(array.shape), datatype)
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        # InferResponse needs a string response_id (None fails when the response is serialised).
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()  # KServe's own flags (--http_port, --grpc_port) are parsed by kserve
    ModelServer(enable_latency_logging=False).start([SavedModel("mnist", args.model_dir)])
