"""MLServer 1.7.1 custom runtime serving our SavedModel, the peer in bench/serve_bench.py (not our server).

Runs inside MLServer's own virtualenv (its pins differ from ours), e.g.
``python3.11 -m venv /tmp/mlserver-venv && /tmp/mlserver-venv/bin/pip install mlserver==1.7.1
tensorflow-cpu==2.21.0``; ``serve_bench.py --mlserver /tmp/mlserver-venv/bin/mlserver`` writes the
settings (adaptive batching, ``parallel_workers: 0``) and starts it. Same TensorFlow thread settings as
our server (one intra-op and one inter-op thread).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRuntime(MLModel):
    async def load(self) -> bool:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started in this process
            pass
        self._function = tf.saved_model.load(self.settings.parameters.uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32).reshape(-1, 28, 28)
        outputs = self._function(images=tf.convert_to_tensor(images))
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("probabilities", outputs["probabilities"].numpy()),
                NumpyCodec.encode_output("classes", outputs["classes"].numpy()),
            ],
        )
