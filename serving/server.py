"""The prediction server: ``create_server(settings)`` builds it, ``start()`` binds and runs it, ``serve``
runs it until SIGTERM.

One event loop runs the gRPC server (digits.v1, TF Serving, Open Inference Protocol v2, health,
reflection) and the HTTP/JSON server (v2 REST, TF Serving REST, the drawing page); both feed the same
data plane, batcher and metrics.

``python -m serving.server --model-root DIR [--port N] [--http-port N] [--metrics-port N] ...`` (all flags:
``--help``; each is also a ``DIGITS_*`` environment variable).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from pydantic import ValidationError
from tensorflow_serving.apis import prediction_service_pb2

from digits.inference import grpc_predict_v2_pb2
from digits.v1 import digits_pb2

from .batcher import Batcher
from .dataplane import DataPlane
from .digits_servicer import DigitsServicer
from .http_server import HttpServer
from .metrics import ServingMetrics
from .model_store import ModelStore, configure_tensorflow_threads
from .rest import create_app
from .rpc import service_handler
from .settings import Settings, parse_settings
from .tfs_servicer import TfsPredictionServicer
from .v2_servicer import V2Servicer

log = logging.getLogger(__name__)

DIGITS_SERVICE = digits_pb2.DESCRIPTOR.services_by_name["DigitClassifier"]
TFS_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
V2_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
V2_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
V2_STATUS_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})  # answer during shutdown too
LIVENESS_SERVICE = "liveness"  # SERVING while the process answers (Kubernetes liveness probe)
SERVING_STATUS = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING_STATUS = health_pb2.HealthCheckResponse.NOT_SERVING


class PredictionServer:
    """gRPC and HTTP servers, model store, batcher and /metrics endpoint over one data plane.

    Building one does no I/O: ``start()`` configures TensorFlow, reads the TLS files, binds the three
    ports (``port``, ``http_port``, ``metrics_port`` are known from then on) and starts answering;
    ``stop()`` closes them again.
    """

    def __init__(self, settings: Settings, extra_handlers: Sequence[grpc.GenericRpcHandler] = ()) -> None:
        self.settings = settings
        self.port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self.http: HttpServer | None = None
        self._httpd = None
        self.metrics = ServingMetrics()
        self.metrics.loaded_version.labels(model=settings.default_model).set(0)
        self.store = ModelStore(settings.model_root, self.metrics, settings.max_loaded_versions)
        self.batcher = Batcher(
            self.metrics,
            max_batch_size=settings.max_batch_size,
            max_queue_delay=settings.max_queue_delay_us / 1e6,
            busy_queue_delay=settings.busy_queue_delay_us / 1e6,
            max_queued_images=settings.max_queued_images,
            threads=settings.batch_threads,
        )
        self.health = health_aio.HealthServicer()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._poller: asyncio.Task | None = None
        self.grpc_server = grpc.aio.server(options=grpc_options(settings))
        self.plane = DataPlane(
            self.store, self.batcher, settings.default_model, settings.max_images_per_request
        )
        digits = DigitsServicer(self.plane)
        tfs = TfsPredictionServicer(self.plane)
        v2 = V2Servicer(self.plane)
        self.grpc_server.add_generic_rpc_handlers(
            [
                service_handler(
                    DIGITS_SERVICE,
                    {
                        "Predict": ("Predict", digits.Predict),
                        "GetModelMetadata": ("GetModelMetadata", digits.GetModelMetadata),
                    },
                    self.metrics,
                    self.plane,
                ),
                service_handler(
                    TFS_SERVICE,
                    {
                        "Predict": ("tfs.Predict", tfs.Predict),
                        "GetModelMetadata": ("tfs.GetModelMetadata", tfs.GetModelMetadata),
                    },
                    self.metrics,
                    self.plane,
                ),
                service_handler(
                    V2_SERVICE,
                    {name: (f"v2.{name}", getattr(v2, name)) for name in V2_METHODS},
                    self.metrics,
                    self.plane,
                    ungated=V2_STATUS_METHODS,
                ),
                *extra_handlers,
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            [
                DIGITS_SERVICE.full_name,
                TFS_SERVICE.full_name,
                V2_SERVICE.full_name,
                HEALTH_SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            self.grpc_server,
        )

    def _bind_grpc(self) -> int:
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert is None or settings.tls_key is None:
            return self.grpc_server.add_insecure_port(address)
        client_ca = settings.tls_client_ca
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca is not None else None,
            require_client_auth=client_ca is not None,
        )
        return self.grpc_server.add_secure_port(address, credentials)

    async def start(self) -> None:
        """Bind the ports and start answering (health NOT_SERVING until a model is loaded); poll the
        repository."""
        settings = self.settings
        configure_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        self.port = self._bind_grpc()
        app = create_app(
            self.plane,
            self.metrics,
            max_body_bytes=settings.max_body_bytes,
            cors_origins=settings.cors_origins,
        )
        self.http = HttpServer(app, settings)
        await self._set_health(NOT_SERVING_STATUS)
        await self.health.set(LIVENESS_SERVICE, SERVING_STATUS)
        self.batcher.start()
        await self.grpc_server.start()
        self.http_port = await self.http.start()
        self._httpd, _ = start_http_server(
            settings.metrics_port, settings.metrics_host, registry=self.metrics.registry
        )
        self.metrics_port = self._httpd.server_port
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository-poller")
        security = "plaintext"
        if self.settings.tls_cert:
            security = "mutual TLS" if self.settings.tls_client_ca else "TLS"
        log.info(
            "gRPC on %s:%d, HTTP on %s:%d (%s), metrics on %s:%d/metrics, model root %s",
            self.settings.host,
            self.port,
            self.settings.host,
            self.http_port,
            security,
            self.settings.metrics_host,
            self.metrics_port,
            self.settings.model_root,
        )

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                changed = await loop.run_in_executor(self._loader, self.store.refresh)
            except Exception:  # a scan error must not stop future scans
                log.exception("scanning the model repository %s failed", self.settings.model_root)
            else:
                if changed:
                    await self._set_health(SERVING_STATUS if self.store.ready() else NOT_SERVING_STATUS)
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def _set_health(self, status: int) -> None:
        for service in ("", DIGITS_SERVICE.full_name, TFS_SERVICE.full_name, V2_SERVICE.full_name):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Shut down in order, within ``grace`` seconds (default: the grace_seconds setting).

        NOT_SERVING at once; new requests get UNAVAILABLE (HTTP 503) on both ports while every request
        taken in before finishes, and until no new request came for ``shutdown_quiet_seconds``; only
        then the ports close. (A call the gRPC core holds but has not handed to us when it stops is
        CANCELLED by the core: the quiet wait is what keeps that from happening to clients that back
        off when told UNAVAILABLE.)
        """
        grace = self.settings.grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
        self.batcher.drain()  # partial batches stop waiting to fill
        if not await self.plane.drain(
            grace, self.settings.shutdown_quiet_seconds
        ):  # v2 ready endpoints answer false from now on
            log.warning("requests still running after the %.1f s grace period", grace)
        remaining = max(0.0, deadline - loop.time())
        await asyncio.gather(self.grpc_server.stop(remaining), *([self.http.stop()] if self.http else []))
        await self.batcher.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped")


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core channel arguments: message limits and the connection limits of the settings."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # fail loudly if the port is taken instead of sharing it
        # A connection that has not finished its HTTP/2 (and TLS) handshake in time is closed.
        ("grpc.server_handshake_timeout_ms", round(settings.grpc_handshake_timeout_seconds * 1000)),
        # A connection with no call on it for this long gets GOAWAY and is closed.
        ("grpc.max_connection_idle_ms", round(settings.grpc_idle_timeout_seconds * 1000)),
        # Ping each client this often and drop it if the ping is not answered: finds dead peers.
        ("grpc.keepalive_time_ms", round(settings.grpc_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.grpc_keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def create_server(
    settings: Settings, extra_handlers: Sequence[grpc.GenericRpcHandler] = ()
) -> PredictionServer:
    """Build the server (no I/O); ``await server.start()`` binds its ports. Call inside an event loop."""
    return PredictionServer(settings, extra_handlers)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = create_server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signal received: shutting down (grace %.1f s)", settings.grace_seconds)
    await server.stop(settings.grace_seconds)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
