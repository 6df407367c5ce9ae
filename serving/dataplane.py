"""The one data plane every protocol layer calls: model lookup, readiness, and batched prediction.

gRPC servicers (``digits.v1``, TF Serving, Open Inference Protocol v2) and the HTTP routes only convert
their wire formats to float32 ``[N, 28, 28]`` arrays and back; what a request may name, when the server is
ready and how images reach the model is decided here, once (as KServe's ``DataPlane`` does).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from .batcher import Batcher
from .errors import ModelNotFound, ModelUnavailable
from .model_store import LoadedModel, ModelStore

SERVER_NAME = "digits-serving"
SHUTTING_DOWN = "the server is shutting down; retry (another replica will answer)"


class DataPlane:
    def __init__(self, store: ModelStore, batcher: Batcher, default_model: str, max_images: int) -> None:
        self.store = store
        self.batcher = batcher
        self.default_model = default_model
        self.max_images = max_images
        self.stopping = False  # set once shutdown begins: not ready any more, still live
        self._admitted = 0  # requests taken in before shutdown began and not answered yet
        self._idle: asyncio.Event | None = None
        self._last_refused = 0.0  # time.monotonic() of the last request refused while shutting down

    def admit(self) -> bool:
        """Take a request in (True), or refuse it once shutdown began (False: answer UNAVAILABLE).

        Every admitted request must call :meth:`release` when its answer is sent.
        """
        if self.stopping:
            self._last_refused = time.monotonic()
            return False
        self._admitted += 1
        return True

    def release(self) -> None:
        self._admitted -= 1
        if self._admitted == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float, quiet: float) -> bool:
        """Refuse new requests from now on; wait up to ``timeout`` s for the admitted ones to finish and
        then for ``quiet`` s without a new request (clients told UNAVAILABLE back off or go elsewhere).

        The quiet wait matters for gRPC: a call the gRPC core holds but has not handed to us yet when
        the server stops is CANCELLED, not UNAVAILABLE. Returns False if the timeout ended the wait
        while admitted requests were still running.
        """
        started = time.monotonic()
        self.stopping = True
        if self._admitted:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                return False
        deadline = started + timeout
        while True:
            now = time.monotonic()
            wait = min(max(self._last_refused, started) + quiet, deadline) - now
            if wait <= 0:
                return True
            await asyncio.sleep(wait)

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
