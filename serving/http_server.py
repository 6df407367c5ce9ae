"""Runs the HTTP/JSON app (``serving/rest.py``) with uvicorn on the gRPC server's own event loop.

The listening socket is bound by ``start()`` (which returns the port, port 0 resolved), and the
process's signals stay with ``serving.server.serve``: uvicorn's own handlers would race ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from .http_protocol import HttpLimits, limited_protocol
from .settings import Settings

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the host program handles SIGTERM/SIGINT and calls HttpServer.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every small response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections linger
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """uvicorn serving ``app`` on ``settings.host:settings.http_port``, with the gRPC port's TLS settings."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._settings = settings
        self._socket: socket.socket | None = None
        self.port: int | None = None
        tls = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca is not None:  # mutual TLS: no client certificate, no connection
                tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # keep the service's logging setup
            access_log=False,
            server_header=False,
            http=limited_protocol(
                HttpLimits(
                    max_header_bytes=settings.http_max_header_bytes,
                    max_headers=settings.http_max_headers,
                    idle_seconds=settings.http_idle_timeout_seconds,
                    header_seconds=settings.http_header_timeout_seconds,
                    body_seconds=settings.http_body_timeout_seconds,
                )
            ),
            timeout_keep_alive=settings.http_idle_timeout_seconds,  # type: ignore[arg-type]
            timeout_graceful_shutdown=max(1, round(settings.grace_seconds)),
            **tls,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind the port and start serving; returns the bound port."""
        self._socket = _bind(self._settings.host, self._settings.http_port)
        self.port = self._socket.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket]), name="http-server"
        )
        while not self._server.started:
            if self._task.done():  # failed to start (e.g. an unreadable certificate)
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (up to the grace period), close connections."""
        if self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        self._server.should_exit = True
        await self._task
