"""The HTTP side's one endpoint wrapper, as ``serving/rpc.py`` is the gRPC side's: every route's body
limit, shutdown admission, status table, metrics and logging in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from .asgi import Reply, json_reply, read_body, send_reply
from .dataplane import SHUTTING_DOWN, DataPlane
from .errors import OK, ModelUnavailable, classify
from .metrics import ServingMetrics
from .wire import shown

log = logging.getLogger(__name__)

OK_CODE = OK.name  # the metrics' code label of a success (a property: looked up once)
CANCELLED_CODE = "CANCELLED"  # the client went away: the gRPC side records the same
# A handler gets the ASGI scope (path parameters in scope["path_params"]) and the request body; it
# returns a Reply or a JSON-serialisable object (sent as 200).
Handler = Callable[[Scope, bytes], Awaitable[object]]


class Endpoint:
    """One route's ASGI endpoint: reads the body, runs the handler, applies the status table, records
    the metrics, sends the answer (the cross-cutting part, in one place for every route).

    A class instance rather than a function, so Starlette's ``Route`` passes it requests as they are.
    """

    def __init__(
        self,
        method: str,
        handler: Handler,
        metrics: ServingMetrics,
        max_body_bytes: int | None,
        plane: DataPlane | None,
    ) -> None:
        self.method = method  # the metrics' method label
        self.handler = handler
        self.metrics = metrics
        self.inflight = metrics.inflight_by_protocol["http"]
        self.max_body_bytes = max_body_bytes  # None: a route without a body
        self.plane = plane  # None: answers during shutdown too (health, readiness, the page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        plane = self.plane
        admitted = plane is not None and plane.admit()
        self.inflight.inc()
        code = OK_CODE
        reply: Reply | None = None
        try:
            if plane is not None and not admitted:
                raise ModelUnavailable(SHUTTING_DOWN)
            limit = self.max_body_bytes
            body = b"" if limit is None else await read_body(scope, receive, limit)
            result = await self.handler(scope, body)
            reply = result if isinstance(result, Reply) else json_reply(result)
        except ClientDisconnect:  # gone mid-body (or sent a broken chunked body): nobody to answer
            code = CANCELLED_CODE
            log.info("%s (HTTP): the client went away before its request was read", self.method)
        except Exception as exc:
            status, message = classify(exc)
            if status.http_status == 500:
                log.exception("%s (HTTP %s) failed", self.method, shown(scope["path"]))
            code = status.name
            reply = json_reply({"error": message}, status.http_status)
        finally:
            self.inflight.dec()
        self.metrics.observe_request("http", self.method, code, time.perf_counter() - started)
        try:
            if reply is not None:
                # While shutting down, ask keep-alive clients to reconnect (to another replica).
                await send_reply(send, reply, close=plane is not None and plane.stopping)
        finally:
            if admitted:
                plane.release()
