"""Steady gRPC load on the prediction service, so dashboards and alerts have something to show.

``python scripts/loadgen.py --target HOST:PORT [--duration S] [--concurrency N] [--rate R]``: each worker
sends ``digits.v1.Predict`` calls (random batches of 1..--max-batch raw images); every --invalid-every-th
call is deliberately malformed (INVALID_ARGUMENT) and every --metadata-every-th is ``GetModelMetadata``,
so every panel (error ratio by code included) gets data. With ``--http-target HOST:PORT`` every
--http-every-th call is an Open Inference Protocol v2 REST ``infer`` over HTTP/JSON instead (malformed
ones too), so the dashboard's protocol panels show both protocols. Prints the status-code counts at the
end; exits 1 when no Predict succeeded. Used by compose.yaml (service ``loadgen``) and tests/deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np

from digits.v1 import digits_pb2, digits_pb2_grpc

log = logging.getLogger("loadgen")

PIXELS = 28 * 28


def _http_infer(target: str, images: np.ndarray, invalid: bool, timeout: float) -> str:
    """One v2 REST infer (blocking; run in a thread); returns the outcome's counter key."""
    shape = [len(images) + 1 if invalid else len(images), PIXELS]
    tensor = {"name": "images", "datatype": "UINT8", "shape": shape, "data": images.ravel().tolist()}
    request = urllib.request.Request(
        f"http://{target}/v2/models/mnist/infer",
        data=json.dumps({"inputs": [tensor]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return "http Predict OK"
    except urllib.error.HTTPError as exc:
        return f"http {exc.code}"
    except OSError:
        return "http unreachable"


async def _worker(
    stub: digits_pb2_grpc.DigitClassifierStub,
    args: argparse.Namespace,
    worker: int,
    deadline: float,
    counts: collections.Counter,
) -> None:
    rng = np.random.default_rng(worker)
    call = 0
    pause = args.concurrency / args.rate if args.rate > 0 else 0.0
    while time.monotonic() < deadline:
        call += 1
        started = time.monotonic()
        try:
            if args.http_target and call % args.http_every == 0:
                size = int(rng.integers(1, args.max_batch + 1))
                images = rng.integers(0, 256, size=(size, PIXELS), dtype=np.uint8)
                invalid = bool(args.invalid_every and (call // args.http_every) % args.invalid_every == 0)
                counts[
                    await asyncio.to_thread(_http_infer, args.http_target, images, invalid, args.timeout)
                ] += 1
            elif args.metadata_every and call % args.metadata_every == 0:
                await stub.GetModelMetadata(digits_pb2.GetModelMetadataRequest(), timeout=args.timeout)
                counts["GetModelMetadata OK"] += 1
            else:
                size = int(rng.integers(1, args.max_batch + 1))
                pixels = rng.integers(0, 256, size=size * PIXELS, dtype=np.uint8).tobytes()
                # A wrong image count is rejected with INVALID_ARGUMENT before it reaches the model.
                invalid = args.invalid_every and call % args.invalid_every == 0
                request = digits_pb2.PredictRequest(
                    num_images=size + 1 if invalid else size, uint8_pixels=pixels
                )
                await stub.Predict(request, timeout=args.timeout)
                counts["Predict OK"] += 1
        except grpc.aio.AioRpcError as exc:
            counts[f"{exc.code().name}"] += 1
        if pause:
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))


async def run(args: argparse.Namespace) -> collections.Counter:
    """Drive load until the duration is over; returns counts per outcome."""
    counts: collections.Counter = collections.Counter()
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=args.connect_timeout)
        stub = digits_pb2_grpc.DigitClassifierStub(channel)
        await asyncio.gather(*(_worker(stub, args, i, deadline, counts) for i in range(args.concurrency)))
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="gRPC address HOST:PORT of the service")
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until killed)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent callers (default 4)")
    parser.add_argument(
        "--rate", type=float, default=0, help="total calls per second (0: as fast as possible)"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch per Predict (default 8)")
    parser.add_argument("--invalid-every", type=int, default=25, help="every Nth call malformed (0: never)")
    parser.add_argument("--metadata-every", type=int, default=50, help="every Nth call GetModelMetadata")
    parser.add_argument("--http-target", help="HTTP address HOST:PORT: send some calls as v2 REST infer")
    parser.add_argument(
        "--http-every", type=int, default=4, help="with --http-target, every Nth call is HTTP"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    if (
        args.concurrency < 1
        or args.max_batch < 1
        or args.rate < 0
        or args.duration < 0
        or args.http_every < 1
    ):
        parser.error("--concurrency, --max-batch, --http-every must be >= 1, --rate and --duration >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    log.info(
        "load on %s: %d callers, rate %s/s, duration %s s",
        args.target,
        args.concurrency,
        args.rate or "max",
        args.duration or "unlimited",
    )
    try:
        counts = asyncio.run(run(args))
    except TimeoutError:
        log.error("server %s not reachable within %.0f s", args.target, args.connect_timeout)
        return 1
    except KeyboardInterrupt:
        return 130
    log.info("done: %s", dict(sorted(counts.items())))
    print(" ".join(f"{key.replace(' ', '_')}={value}" for key, value in sorted(counts.items())))
    return 0 if counts["Predict OK"] else 1


if __name__ == "__main__":
    sys.exit(main())
