"""Helpers for the serving tests: tiny models (exported by the job's own code), a server thread."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import modelrepo
from serving.server import PredictionServer, create_server
from serving.settings import Settings
from tests.support import REPO


def build_model(seed: int = 0):
    """Rescaling(1/255) -> Flatten -> Dense(10, softmax): the contract's shape, tiny and fast."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def metadata(name: str = "mnist", val_accuracy: float | None = 0.9) -> modelrepo.ModelMetadata:
    return modelrepo.ModelMetadata(
        model_name=name,
        tuner="random",
        final_model="best_trial",
        hyperparameters={"units": 0, "learning_rate": 0.001},
        val_accuracy=val_accuracy,
        test_accuracy=val_accuracy,
    )


def publish_copy(source: Path, root: Path, name: str = "mnist") -> tuple[int, Path]:
    """Publish a copy of an exported version (atomically, as the job does): faster than re-exporting."""
    meta = modelrepo.read_metadata(source).model_copy(update={"model_name": name})

    def write(staging: Path) -> None:
        for entry in source.iterdir():
            if entry.name == modelrepo.METADATA_FILE:
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name)
            else:
                shutil.copy2(entry, staging / entry.name)

    return modelrepo.publish(root, meta, write)


class ServerThread:
    """A real server on port 0, run by its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: PredictionServer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        self.port = self.server.port
        self.http_port = self.server.http_port
        self.metrics_port = self.server.metrics_port
        self.target = f"127.0.0.1:{self.port}"
        self.base_url = f"http{'s' if settings.tls_cert else ''}://127.0.0.1:{self.http_port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = create_server(self.settings)
            await self.server.start()

        try:
            self.loop.run_until_complete(start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def stop(self, grace: float = 1.0) -> None:
        if self.server is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def http_call(
    url: str, body: object = None, *, method: str | None = None, headers: dict | None = None, context=None
) -> tuple[int, dict | str, dict]:
    """(status, JSON body or text, headers) of one HTTP request; ``body`` is JSON-encoded unless bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            status, raw, found = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, found = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(raw), found
    except ValueError:
        return status, raw.decode(errors="replace"), found


def wait_serving(target: str, timeout: float = 60.0, service: str = "") -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not SERVING after {timeout} s (status {status})")
            time.sleep(0.05)


def publish_tf_module(root: Path, signature_fn, name: str = "mnist") -> tuple[int, Path]:
    """Publish a hand-written ``tf.function`` as a version (for models the job would never export)."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = signature_fn

    def write(staging: Path) -> None:
        tf.saved_model.save(module, str(staging), signatures={modelrepo.SIGNATURE_NAME: signature_fn})

    return modelrepo.publish(root, metadata(name), write)


def wrong_signature_fn():
    """Takes flat [N, 784] vectors under ``x``: loads fine in TensorFlow, breaks the contract."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")])
    def serve(x):
        probabilities = tf.nn.softmax(tf.zeros([tf.shape(x)[0], 10]))
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return serve


def failing_fn(max_ok: int = 2):
    """Honours the contract but fails inside TensorFlow for batches above ``max_ok`` (a server fault)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve(images):
        count = tf.shape(images)[0]
        tf.debugging.assert_less_equal(count, max_ok, message="secret internal detail")
        probabilities = tf.nn.softmax(tf.zeros([count, 10]))
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return serve


def fixed_rows_fn(rows: int = 2):
    """Always answers ``rows`` rows whatever the batch size: passes the warm-up, breaks other batches."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve(images):
        probabilities = tf.nn.softmax(tf.zeros([rows, 10]) + tf.reduce_sum(images) * 0)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return serve


def triton_client_answer(target: str, images: np.ndarray, workdir: Path) -> dict:
    """Triton's own gRPC client on ``images`` in a child process (tests/support/triton_client.py)."""
    np.save(workdir / "images.npy", images)
    result = subprocess.run(
        [sys.executable, str(REPO / "tests/support/triton_client.py"), target, str(workdir / "images.npy")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
