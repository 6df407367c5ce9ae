"""Serving benchmark: closed-loop load on loopback against the real server; prints one table.

    python bench/serve_bench.py [--model-root DIR] [--duration 5] [--mlserver PATH/TO/mlserver]
        [--kserve PATH/TO/kserve-venv/bin/python]

Measures, in one run: single-image Predict at concurrency 1 and 32 (throughput, p50, p99); a no-op
handler on the same grpc.aio server as the transport floor; TF Serving Predict and Open Inference
Protocol v2 ModelInfer (raw FP32) at c=1 and c=32 on the same port; v2 REST infer at c=1 and c=32 on the
HTTP port, in JSON and with the binary tensor data extension (and both with 64-image requests at c=4,
where the binary form pays); a no-op endpoint of the same HTTP stack
(Starlette on uvicorn, same settings) in its own process, a stricter one (a plain ASGI callable on the
same uvicorn, reading and answering like the service's direct v2 infer route) and a plain aiohttp no-op
server; with --mlserver, MLServer 1.7.1 serving the same SavedModel (custom runtime
bench/mlserver_runtime.py, adaptive batching, parallel_workers 0) and with --kserve, KServe 0.21.0's
ModelServer (custom kserve.Model, bench/kserve_model.py), each over v2 REST JSON and v2 gRPC at c=1 and
c=32; the raw in-process SavedModel call at batch 1 and 256 (compute floor); batch-256 Predict in
images/s; cold start (exec to SERVING); resident memory. The load generator is an asyncio client (gRPC, or
HTTP/1.1 keep-alive on raw streams) in its own process. Without --model-root a representative MLP
(784-512-256-10, random weights) is exported with the tuning job's export code into a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NOOP_METHOD = "/bench.Noop/Call"
TFS_METHOD = "/tensorflow.serving.PredictionService/Predict"


# ---- load generator (its own process; imports grpc only) ----
async def _http_call(reader, writer, head: bytes, body: bytes) -> int:
    """One HTTP/1.1 request on a kept-alive connection; returns the status code."""
    writer.write(head + body)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _load(args: argparse.Namespace) -> dict:
    payload = Path(args.payload).read_bytes()
    target, concurrency = args.load, args.concurrency
    duration, warmup = args.duration, args.warmup
    latencies: list[float] = []
    errors = completed = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def run_worker(call) -> None:
        nonlocal errors, completed
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            if not await call():
                errors += 1
                continue
            completed += 1
            if began >= measure_from:
                latencies.append(time.perf_counter() - began)

    if args.method.startswith(
        "/"
    ):  # a gRPC method path, raw bytes both ways: no client-side (de)serialisation
        import grpc

        async with grpc.aio.insecure_channel(target) as channel:
            rpc = channel.unary_unary(args.method)

            async def grpc_call() -> bool:
                try:
                    await rpc(payload, timeout=30)
                except grpc.RpcError:
                    return False
                return True

            await asyncio.gather(*(run_worker(grpc_call) for _ in range(concurrency)))
    else:  # "POST /path": HTTP/1.1 with keep-alive, one connection per worker
        verb, path = args.method.split(" ", 1)
        extra = Path(args.payload + ".headers")  # e.g. Inference-Header-Content-Length of a binary body
        extra_headers = extra.read_bytes().decode() if extra.exists() else ""
        head = (
            f"{verb} {path} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\n"
            f"{extra_headers}Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        host, port = target.rsplit(":", 1)

        async def http_worker() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))

            async def http_call() -> bool:
                return await _http_call(reader, writer, head, payload) == 200

            try:
                await run_worker(http_call)
            finally:
                writer.close()

        await asyncio.gather(*(http_worker() for _ in range(concurrency)))
    latencies.sort()
    count = len(latencies)
    return {
        "requests_per_s": count / duration,
        "images_per_s": count * args.images / duration,
        "p50_ms": 1000 * latencies[count // 2] if count else float("nan"),
        "p99_ms": 1000 * latencies[min(count - 1, int(count * 0.99))] if count else float("nan"),
        "errors": errors,
        "completed": completed,  # warm-up included: divides the server's CPU time
    }


# ---- server with an extra no-op handler (its own process) ----
async def _serve(model_root: str, port: int, http_port: int, metrics_port: int) -> None:
    import grpc

    from serving.server import create_server
    from serving.settings import Settings

    async def noop(request: bytes, context) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Noop", {"Call": grpc.unary_unary_rpc_method_handler(noop)}
    )
    settings = Settings(
        model_root=model_root,
        host="127.0.0.1",
        port=port,
        http_port=http_port,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
    )
    server = create_server(settings, extra_handlers=[handler])
    await server.start()
    await asyncio.Event().wait()


async def _serve_http_noop(port: int, plain: bool = False) -> None:
    """The HTTP floor: the same stack and settings as the service's HTTP port, a handler that does nothing.

    ``plain``: a plain ASGI callable instead of a Starlette route, reading and answering with the same
    functions as the service's direct v2 infer route (``serving.rest.HttpApp``); the stricter floor.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from serving.asgi import Reply, read_body, send_reply
    from serving.http_server import HttpServer
    from serving.settings import Settings

    async def noop(request: Request) -> Response:
        await request.body()
        return Response(b"{}", media_type="application/json")

    async def plain_noop(scope, receive, send) -> None:
        await read_body(scope, receive, 1 << 24)
        await send_reply(send, Reply(b"{}"))

    app = plain_noop if plain else Starlette(routes=[Route("/noop", noop, methods=["POST"])])
    server = HttpServer(app, Settings(model_root=".", host="127.0.0.1", http_port=port))
    await server.start()
    await asyncio.Event().wait()


def _serve_aiohttp_noop(port: int) -> None:
    """A plain aiohttp server whose one route reads the body and answers ``{}``: a floor outside uvicorn."""
    from aiohttp import web

    async def noop(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=1 << 24)
    app.router.add_post("/noop", noop)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- orchestration (this process) ----
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_serving(target: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{target} not SERVING after {timeout} s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (noise-robust on a shared machine: work, not wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _wait_http_post(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not answering after {timeout} s")


def _payloads(directory: Path) -> dict[str, Path]:
    """Request bodies, serialised once here (the load generator imports neither TensorFlow nor our code)."""
    import json

    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from digits.inference import grpc_predict_v2_pb2
    from digits.v1 import digits_pb2

    image = (np.arange(784) % 256).astype(np.uint8).reshape(1, 28, 28)
    tfs = predict_pb2.PredictRequest()
    tfs.model_spec.name = "mnist"
    tfs.inputs["images"].CopyFrom(tf.make_tensor_proto(image.astype(np.float32)))
    v2 = grpc_predict_v2_pb2.ModelInferRequest(model_name="mnist")
    v2.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28])
    v2.raw_input_contents.append(image.astype("<f4").tobytes())

    def v2_rest(count: int) -> tuple[bytes, bytes, bytes]:
        """``count`` images as v2 REST bodies: JSON, binary, and the binary body's JSON head."""
        images = np.tile(image, (count, 1, 1))
        shape = [count, 28, 28]
        tensor = {"name": "images", "datatype": "FP32", "shape": shape, "data": images.ravel().tolist()}
        raw = images.astype("<f4").tobytes()
        binary_head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": shape,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        return json.dumps({"inputs": [tensor]}).encode(), binary_head + raw, binary_head  # fmt: skip

    json1, binary1, head1 = v2_rest(1)
    json64, binary64, head64 = v2_rest(64)
    bodies = {
        "empty": b"",
        "predict1": digits_pb2.PredictRequest(uint8_pixels=image.tobytes()).SerializeToString(),
        "predict256": digits_pb2.PredictRequest(
            uint8_pixels=np.tile(image, (256, 1, 1)).tobytes()
        ).SerializeToString(),
        "tfs1": tfs.SerializeToString(),
        "v2grpc1": v2.SerializeToString(),
        "v2json1": json1,
        "v2bin1": binary1,  # as tritonclient.http sends it by default
        "v2json64": json64,
        "v2bin64": binary64,
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = directory / f"{name}.bin"
        paths[name].write_bytes(body)
    for name, head in (("v2bin1", head1), ("v2bin64", head64)):
        (directory / f"{name}.bin.headers").write_text(f"Inference-Header-Content-Length: {len(head)}\r\n")
    return paths


def _start_mlserver(mlserver: str, model_dir: Path, directory: Path) -> tuple[subprocess.Popen, int, int]:
    """MLServer 1.7.1 over the same SavedModel: custom runtime, adaptive batching, no worker processes."""
    import json

    http_port, grpc_port = _free_port(), _free_port()
    (directory / "settings.json").write_text(
        json.dumps({"http_port": http_port, "grpc_port": grpc_port, "metrics_port": _free_port(),
                    "parallel_workers": 0, "debug": False, "host": "127.0.0.1"})
    )  # fmt: skip
    (directory / "model-settings.json").write_text(
        json.dumps({"name": "mnist", "implementation": "mlserver_runtime.SavedModelRuntime",
                    "parameters": {"uri": str(model_dir)}, "max_batch_size": 256, "max_batch_time": 0.003})
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [mlserver, "start", str(directory)], cwd=directory, env=env,
        stdout=subprocess.DEVNULL, stderr=(directory / "mlserver.log").open("wb"),
    )  # fmt: skip
    return process, http_port, grpc_port


def _start_kserve(python: str, model_dir: Path, directory: Path) -> tuple[subprocess.Popen, int, int]:
    """KServe 0.21.0's ModelServer over the same SavedModel (bench/kserve_model.py), its defaults."""
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [python, str(REPO / "bench" / "kserve_model.py"), "--model_dir", str(model_dir),
         "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
        cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=(directory / "kserve.log").open("wb"),
    )  # fmt: skip
    return process, http_port, grpc_port


def _run_load(
    target: str, method: str, payload: Path, load: tuple[int, int], args: argparse.Namespace
) -> dict:
    images, concurrency = load
    command = [sys.executable, __file__, "--load", target, "--method", method, "--payload", str(payload)]
    command += ["--images", str(images)]
    command += [
        "--concurrency",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def _raw_model(model_dir: Path, batch: int, seconds: float) -> dict:
    import numpy as np

    from serving.model_store import load_version

    model = load_version(model_dir.parent.name, int(model_dir.name), model_dir)
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28)).astype(np.float32)
    for _ in range(20):
        model.predict(images)
    latencies = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        model.predict(images)
        latencies.append(time.perf_counter() - began)
    latencies.sort()
    count = len(latencies)
    return {
        "requests_per_s": count / sum(latencies),
        "images_per_s": count * batch / sum(latencies),
        "p50_ms": 1000 * latencies[count // 2],
        "p99_ms": 1000 * latencies[int(count * 0.99)],
    }


def _export_representative(root: Path, hidden: list[int]) -> Path:
    import keras

    import modelrepo
    from jobs.export import export_model

    keras.utils.set_random_seed(0)
    layers = [keras.Input((28, 28)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten()]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    layers.append(keras.layers.Dense(10, activation="softmax"))
    metadata = modelrepo.ModelMetadata(
        model_name="mnist", tuner="bench", final_model="best_trial", hyperparameters={"hidden": hidden}
    )
    return export_model(keras.Sequential(layers), root, metadata)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-root", type=Path, help="a model repository (default: export a representative MLP)"
    )
    parser.add_argument("--hidden", default="512,256", help="hidden layer sizes of the representative MLP")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--batch-concurrency", type=int, default=2, help="concurrent batch-256 requests")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the gRPC phases, interleaved; report each one's best run",
    )
    parser.add_argument(
        "--mlserver", help="MLServer 1.7.1 executable (its own virtualenv) to compare with; omitted: skipped"
    )
    parser.add_argument(
        "--kserve",
        help="python of a KServe 0.21.0 virtualenv to compare with (bench/kserve_model.py); omitted: skipped",
    )
    parser.add_argument("--aiohttp-noop", type=int, help=argparse.SUPPRESS)  # internal: the aiohttp floor
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as the load generator
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run as the server (model root)
    parser.add_argument("--method", default="", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--http-noop", type=int, help=argparse.SUPPRESS)  # internal: the HTTP floor
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # internal: plain ASGI floor
    parser.add_argument("--images", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="0,0,0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.load:
        result = asyncio.run(_load(args))
        print(json.dumps(result))
        return 0
    if args.serve:
        port, http_port, metrics_port = (int(p) for p in args.ports.split(","))
        asyncio.run(_serve(args.serve, port, http_port, metrics_port))
        return 0
    if args.http_noop:
        asyncio.run(_serve_http_noop(args.http_noop, args.plain))
        return 0
    if args.aiohttp_noop:
        _serve_aiohttp_noop(args.aiohttp_noop)
        return 0

    from serving.model_store import configure_tensorflow_threads
    from serving.settings import Settings

    # The raw floor runs with the server's TensorFlow thread settings (before TensorFlow starts).
    defaults = Settings(model_root=".")
    configure_tensorflow_threads(defaults.tf_intra_op_threads, defaults.tf_inter_op_threads)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        root = args.model_root
        if root is None:
            root = Path(tmp) / "models"
            _export_representative(root, [int(units) for units in args.hidden.split(",")])
        import modelrepo

        name = modelrepo.DEFAULT_MODEL_NAME
        model_dir = modelrepo.version_dir(root, name, modelrepo.list_versions(root, name)[-1])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

        # Cold start: the real CLI, from exec to health SERVING.
        port = _free_port()
        began = time.perf_counter()
        cold = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--model-root", str(root), "--host", "127.0.0.1",
             "--port", str(port), "--http-port", "0", "--metrics-port", str(_free_port())],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_serving(f"127.0.0.1:{port}", cold)
        cold_start = time.perf_counter() - began
        cold_rss = _rss_mb(cold.pid)[0]
        cold.terminate()
        cold.wait(30)

        payloads = _payloads(Path(tmp))
        port, http_port, noop_port, plain_port = _free_port(), _free_port(), _free_port(), _free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root), "--ports", f"{port},{http_port},{_free_port()}"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        http_noop = subprocess.Popen(
            [sys.executable, __file__, "--http-noop", str(noop_port)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        plain_noop = subprocess.Popen(
            [sys.executable, __file__, "--http-noop", str(plain_port), "--plain"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        aiohttp_port = _free_port()
        aiohttp_noop = subprocess.Popen(
            [sys.executable, __file__, "--aiohttp-noop", str(aiohttp_port)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        peers = [server, http_noop, plain_noop, aiohttp_noop]
        target, http_target = f"127.0.0.1:{port}", f"127.0.0.1:{http_port}"
        infer_path = "POST /v2/models/mnist/infer"
        v2_method = "/inference.GRPCInferenceService/ModelInfer"
        phases = {
            # phase: (address, method, payload, images per request, concurrency)
            "noop c=1": (target, NOOP_METHOD, "empty", 1, 1),
            "noop c=32": (target, NOOP_METHOD, "empty", 1, 32),
            "Predict 1 img c=1": (target, "/digits.v1.DigitClassifier/Predict", "predict1", 1, 1),
            "Predict 1 img c=32": (target, "/digits.v1.DigitClassifier/Predict", "predict1", 1, 32),
            "TFS Predict 1 img c=32": (target, TFS_METHOD, "tfs1", 1, 32),
            "v2 gRPC infer c=1": (target, v2_method, "v2grpc1", 1, 1),
            "v2 gRPC infer c=32": (target, v2_method, "v2grpc1", 1, 32),
            f"Predict 256 img c={args.batch_concurrency}": (
                target, "/digits.v1.DigitClassifier/Predict", "predict256", 256, args.batch_concurrency,
            ),
            "HTTP no-op c=32": (f"127.0.0.1:{noop_port}", "POST /noop", "v2json1", 1, 32),
            "HTTP no-op plain c=32": (f"127.0.0.1:{plain_port}", "POST /noop", "v2json1", 1, 32),
            "aiohttp no-op c=1": (f"127.0.0.1:{aiohttp_port}", "POST /noop", "v2json1", 1, 1),
            "aiohttp no-op c=32": (f"127.0.0.1:{aiohttp_port}", "POST /noop", "v2json1", 1, 32),
            "HTTP v2 JSON c=1": (http_target, infer_path, "v2json1", 1, 1),
            "HTTP v2 JSON c=32": (http_target, infer_path, "v2json1", 1, 32),
            "HTTP v2 binary c=1": (http_target, infer_path, "v2bin1", 1, 1),
            "HTTP v2 binary c=32": (http_target, infer_path, "v2bin1", 1, 32),
            # where the binary extension pays: larger tensors (64 images, 200 KB of JSON text)
            "HTTP v2 JSON 64 img c=4": (http_target, infer_path, "v2json64", 64, 4),
            "HTTP v2 binary 64 img c=4": (http_target, infer_path, "v2bin64", 64, 4),
        }  # fmt: skip
        owner = {target: server, http_target: server, f"127.0.0.1:{noop_port}": http_noop,
                 f"127.0.0.1:{plain_port}": plain_noop,
                 f"127.0.0.1:{aiohttp_port}": aiohttp_noop}  # fmt: skip
        try:
            for label, executable, start in (
                ("MLServer", args.mlserver, _start_mlserver),
                ("KServe", args.kserve, _start_kserve),
            ):
                if not executable:
                    continue
                peer_dir = Path(tmp) / label.lower()
                peer_dir.mkdir()
                process, peer_http, peer_grpc = start(executable, model_dir, peer_dir)
                peers.append(process)
                rest_target, grpc_target = f"127.0.0.1:{peer_http}", f"127.0.0.1:{peer_grpc}"
                owner[rest_target] = owner[grpc_target] = process
                for concurrency in (1, 32):
                    phases[f"{label} v2 JSON c={concurrency}"] = (
                        rest_target,
                        infer_path,
                        "v2json1",
                        1,
                        concurrency,
                    )
                    phases[f"{label} v2 gRPC c={concurrency}"] = (
                        grpc_target,
                        v2_method,
                        "v2grpc1",
                        1,
                        concurrency,
                    )
                _wait_http(f"http://{rest_target}/v2/models/mnist/ready", process)
            _wait_serving(target, server)
            _wait_http(f"http://{http_target}/v2/health/ready", server)
            _wait_http_post(f"http://127.0.0.1:{aiohttp_port}/noop", aiohttp_noop)
            results: dict[str, dict] = {}
            for _ in range(args.rounds):  # interleaved rounds; keep each phase's best (least disturbed) run
                for phase, (where, method, payload, images, concurrency) in phases.items():
                    process = owner[where]
                    cpu = _cpu_seconds(process.pid)
                    result = _run_load(where, method, payloads[payload], (images, concurrency), args)
                    result["cpu_us"] = 1e6 * (_cpu_seconds(process.pid) - cpu) / max(result["completed"], 1)
                    if phase not in results or result["requests_per_s"] > results[phase]["requests_per_s"]:
                        results[phase] = result
            rss, peak = _rss_mb(server.pid)
        finally:
            for process in peers:
                process.terminate()
                process.wait(30)
        results["raw model batch 1"] = _raw_model(model_dir, 1, args.duration)
        results["raw model batch 256"] = _raw_model(model_dir, 256, args.duration)

    print(
        f"model: {model_dir}; {args.duration:g} s per phase after {args.warmup:g} s warm-up, "
        f"best of {args.rounds} round(s)"
    )
    print(
        f"| {'phase':<26} | {'req/s':>9} | {'images/s':>10} | {'p50 ms':>7} | {'p99 ms':>7} | errors "
        "| server CPU us/req |"
    )
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 12}|{'-' * 9}|{'-' * 9}|--------|-------------------|")
    for phase, r in results.items():
        cells = [f"{r['requests_per_s']:>9.0f}", f"{r['images_per_s']:>10.0f}", f"{r['p50_ms']:>7.3f}"]
        cells += [f"{r['p99_ms']:>7.3f}", f"{r.get('errors', '-'):>6}"]
        cells.append(f"{r['cpu_us']:>17.0f}" if "cpu_us" in r else f"{'-':>17}")
        print(f"| {phase:<26} | " + " | ".join(cells) + " |")
    print(f"cold start (exec -> SERVING): {cold_start:.2f} s; resident memory {cold_rss:.0f} MB after start")
    print(f"resident memory after the load: {rss:.0f} MB (peak {peak:.0f} MB); cpus: {os.cpu_count()}")

    batch_key = f"Predict 256 img c={args.batch_concurrency}"

    def rate(phase: str) -> float:
        return results[phase]["requests_per_s"]

    checks = [
        ("c=32 Predict >= 70% of no-op req/s", rate("Predict 1 img c=32") / rate("noop c=32"), 0.70),
        ("batch-256 Predict >= 50% of raw images/s",
         results[batch_key]["images_per_s"] / results["raw model batch 256"]["images_per_s"], 0.50),
        ("c=32 v2 gRPC infer >= 90% of TF Serving Predict req/s",
         rate("v2 gRPC infer c=32") / rate("TFS Predict 1 img c=32"), 0.90),
        ("c=32 HTTP v2 JSON >= 60% of the HTTP no-op req/s",
         rate("HTTP v2 JSON c=32") / rate("HTTP no-op c=32"), 0.60),
        ("c=32 HTTP v2 JSON >= 60% of the plain aiohttp no-op req/s",
         rate("HTTP v2 JSON c=32") / rate("aiohttp no-op c=32"), 0.60),
        ("c=32 HTTP v2 binary >= 1.3x HTTP v2 JSON req/s",
         rate("HTTP v2 binary c=32") / rate("HTTP v2 JSON c=32"), 1.3),
        ("(no target) 64-image requests at c=4: HTTP v2 binary against HTTP v2 JSON req/s",
         rate("HTTP v2 binary 64 img c=4") / rate("HTTP v2 JSON 64 img c=4"), 0.0),
    ]  # fmt: skip
    if "MLServer v2 JSON c=32" in results:
        checks.append(
            ("c=32 HTTP v2 JSON >= 4x MLServer's v2 REST req/s",
             rate("HTTP v2 JSON c=32") / rate("MLServer v2 JSON c=32"), 4.0)
        )  # fmt: skip
        checks.append(
            ("c=32 v2 gRPC >= 2x MLServer's v2 gRPC req/s",
             rate("v2 gRPC infer c=32") / rate("MLServer v2 gRPC c=32"), 2.0)
        )  # fmt: skip
    if "KServe v2 JSON c=32" in results:
        checks.append(
            ("c=32 HTTP v2 JSON >= 5x KServe's v2 REST req/s",
             rate("HTTP v2 JSON c=32") / rate("KServe v2 JSON c=32"), 5.0)
        )  # fmt: skip
        checks.append(
            ("(no target) c=32 v2 gRPC against KServe's v2 gRPC req/s",
             rate("v2 gRPC infer c=32") / rate("KServe v2 gRPC c=32"), 0.0)
        )  # fmt: skip
    limit = 2 * (results["noop c=1"]["p99_ms"] + results["raw model batch 1"]["p99_ms"])
    for label, ratio, target_ratio in checks:
        shown = f"{ratio:.2f}x" if target_ratio > 1 else f"{ratio:.0%}"
        verdict = "" if target_ratio == 0 else f" -> {'PASS' if ratio >= target_ratio else 'FAIL'}"
        if target_ratio == 0:
            shown = f"{ratio:.2f}x"
        print(f"{label}: {shown}{verdict}")
    plain = rate("HTTP v2 JSON c=32") / rate("HTTP no-op plain c=32")
    print(f"(no target) c=32 HTTP v2 JSON against the plain-ASGI no-op on the same uvicorn: {plain:.0%}")
    cpu = {phase: r["cpu_us"] for phase, r in results.items() if "cpu_us" in r}
    print(
        "server CPU per request at c=32 (robust to other load on the machine): "
        f"v2 gRPC {cpu['v2 gRPC infer c=32']:.0f} us vs "
        f"TF Serving Predict {cpu['TFS Predict 1 img c=32']:.0f} us; "
        f"HTTP v2 JSON {cpu['HTTP v2 JSON c=32']:.0f} us vs HTTP no-op {cpu['HTTP no-op c=32']:.0f} us "
        f"(plain ASGI {cpu['HTTP no-op plain c=32']:.0f} us)"
        + (f" vs MLServer {cpu['MLServer v2 JSON c=32']:.0f} us" if "MLServer v2 JSON c=32" in cpu else "")
    )
    p99 = results["Predict 1 img c=1"]["p99_ms"]
    verdict = "PASS" if p99 <= limit else "FAIL"
    print(f"c=1 Predict p99 {p99:.3f} ms <= 2 x (no-op p99 + raw p99) = {limit:.3f} ms -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
