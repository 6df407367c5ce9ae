"""The one data plane every protocol layer calls: model lookup, readiness, and batched prediction.

gRPC servicers (``digits.v1``, TF Serving, Open Inference Protocol v2) and the HTTP routes only convert
their wire formats to float32 ``[N, 28, 28]`` arrays and back; what a request may name, when the server is
ready and how images reach the model is decided here, once (as KServe's ``DataPlane`` does).
"""

from __future__ import annotations

import numpy as np

from .batcher import Batcher
from .errors import InvalidInput, ModelNotFound, ModelUnavailable
from .model_store import LoadedModel, ModelStore

SERVER_NAME = "digits-serving"


class DataPlane:
    def __init__(self, store: ModelStore, batcher: Batcher, default_model: str, max_images: int) -> None:
        self.store = store
        self.batcher = batcher
        self.default_model = default_model
        self.max_images = max_images
        self.stopping = False  # set once shutdown begins: not ready any more, still live

    def live(self) -> bool:
        return not self.stopping

    def ready(self) -> bool:
        return self.store.ready() and not self.stopping

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded ``version`` of model ``name`` (empty name: the default model; None: the newest)."""
        return self.store.get(name or self.default_model, version)

    def model_ready(self, name: str, version: int | None = None) -> bool:
        """True if that model (version) answers now; NOT_FOUND for names that are not served."""
        try:
            self.model(name, version)
        except ModelUnavailable:
            return False
        except ModelNotFound:
            if version is not None and self.store.versions(name or self.default_model):
                return False  # a known model whose version is not loaded
            raise
        return not self.stopping

    def versions(self, name: str) -> list[LoadedModel]:
        """Loaded versions of ``name`` (empty: the default model), newest first."""
        return self.store.versions(name or self.default_model)

    async def predict(self, model: LoadedModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Classify float32 ``[N, 28, 28]`` images on ``model``: (probabilities [N, 10], classes [N])."""
        return await self.batcher.predict(model, images)


def parse_version(text: str, field: str) -> int | None:
    """A version given as a string (Open Inference Protocol, REST paths): '' is the newest loaded."""
    if text == "":
        return None
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"{field} must be a positive integer or empty (newest), got {text!r}")
    return int(text)
