"""Our own CPU per single-image v2 REST infer, without sockets: the ASGI app driven in process.

    python bench/http_inprocess.py [--seconds 3] [--stub-model] [--concurrency 32]

Builds the service's HTTP app (``serving.rest.create_app``) over a real model store, batcher and metrics
(the representative MLP of ``bench/serve_bench.py``), then has ``--concurrency`` callers send the same
single-image v2 JSON request through it in a closed loop, with ASGI ``receive``/``send`` stand-ins in
place of uvicorn. Prints requests per second, process CPU per request and the mean batch. With
``--stub-model`` the model returns constant rows at once, leaving only our Python (parsing, validation,
batcher, metrics, response); without it the difference is the model call's share. What uvicorn and the
socket cost is what the benchmark's HTTP no-op phases measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PATH = "/v2/models/mnist/infer"


def _scope(body: bytes) -> dict:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return {"type": "http", "method": "POST", "path": PATH, "raw_path": PATH.encode(), "root_path": "",
            "query_string": b"", "headers": headers, "http_version": "1.1", "scheme": "http"}  # fmt: skip


async def _call(app, body: bytes) -> None:
    """One request through the ASGI app, with uvicorn's part played by two closures."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer: list[dict] = []

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        answer.append(message)

    await app(_scope(body), receive, send)
    if answer[0]["status"] != 200:
        raise RuntimeError(f"status {answer[0]['status']}: {answer[1]['body'][:200]!r}")


async def _drive(app, body: bytes, callers: int, seconds: float) -> int:
    """Closed loop: each caller sends the next request when its answer is complete; returns the count."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await _call(app, body)
            done += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done


async def _measure(root: Path, args: argparse.Namespace) -> None:
    import numpy as np

    from serving.batcher import Batcher
    from serving.dataplane import DataPlane
    from serving.metrics import ServingMetrics
    from serving.model_store import ModelStore
    from serving.rest import create_app
    from serving.settings import Settings

    settings = Settings(model_root=root)
    metrics = ServingMetrics()
    store = ModelStore(root, metrics)
    store.refresh()
    if args.stub_model:
        model = store.get("mnist")
        rows = np.full((settings.max_batch_size, 10), 0.1, np.float32)
        classes = np.zeros(settings.max_batch_size, np.int64)
        model.predict = lambda images: (rows[: len(images)], classes[: len(images)])
    batcher = Batcher(
        metrics,
        max_batch_size=settings.max_batch_size,
        busy_queue_delay=settings.busy_queue_delay_us / 1e6,
        max_queued_images=settings.max_queued_images,
    )
    batcher.start()
    plane = DataPlane(store, batcher, "mnist", settings.max_images_per_request)
    app = create_app(plane, metrics, max_body_bytes=settings.max_body_bytes)
    pixels = (np.arange(784) % 256).tolist()  # the same request as serve_bench.py's v2json1
    tensor = {"name": "images", "datatype": "FP32", "shape": [1, 28, 28], "data": pixels}
    body = json.dumps({"inputs": [tensor]})
    await _drive(app, body.encode(), args.concurrency, 1.0)  # warm-up
    batches_before = metrics.batch_size.collect()[0].samples
    cpu, wall = time.process_time(), time.perf_counter()
    count = await _drive(app, body.encode(), args.concurrency, args.seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    before = {s.name: s.value for s in batches_before}
    batches = after["digits_batch_size_count"] - before["digits_batch_size_count"]
    images = after["digits_batch_size_sum"] - before["digits_batch_size_sum"]
    model = "stubbed model" if args.stub_model else "real model"
    print(f"{model}: {count / wall:.0f} req/s, {1e6 * cpu / count:.1f} us of process CPU per request, "
          f"mean batch {images / batches:.1f}")  # fmt: skip
    await batcher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds (after 1 s warm-up)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers in the closed loop")
    parser.add_argument("--stub-model", action="store_true", help="replace the model call by constant rows")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.serve_bench import _export_representative
    from serving.model_store import configure_tensorflow_threads
    from serving.settings import Settings

    defaults = Settings(model_root=".")  # the server's TensorFlow threads, set before TensorFlow starts
    configure_tensorflow_threads(defaults.tf_intra_op_threads, defaults.tf_inter_op_threads)
    with tempfile.TemporaryDirectory(prefix="http-inprocess-") as tmp:
        root = Path(tmp) / "models"
        _export_representative(root, [512, 256])
        asyncio.run(_measure(root, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
