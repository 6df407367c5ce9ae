"""Registers servicer methods on the gRPC server, with status mapping and metrics applied in one place.

Handlers receive raw bytes and parse them here, so a request that is not even valid protobuf is the
client's mistake (INVALID_ARGUMENT) rather than gRPC's default INTERNAL for deserialisation failures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from .dataplane import SHUTTING_DOWN, DataPlane
from .errors import InvalidInput, status_for
from .metrics import ServingMetrics

log = logging.getLogger(__name__)

Handler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


def service_handler(
    service: ServiceDescriptor,
    methods: Mapping[str, tuple[str, Handler]],
    metrics: ServingMetrics,
    plane: DataPlane,
    ungated: frozenset[str] = frozenset(),
) -> grpc.GenericRpcHandler:
    """A generic handler for ``service``: ``methods`` maps RPC name -> (metric label, handler).

    Once shutdown begins, RPCs answer UNAVAILABLE, except those named in ``ungated`` (health and
    readiness, which report the shutdown themselves); RPCs taken in before it run to the end. RPCs of
    the service that are not in ``methods`` answer UNIMPLEMENTED (gRPC's own behaviour).
    """
    handlers = {}
    for name, (label, handler) in methods.items():
        request_class = message_factory.GetMessageClass(service.methods_by_name[name].input_type)
        wrapped = _wrap(label, handler, request_class, metrics, None if name in ungated else plane)
        handlers[name] = grpc.unary_unary_rpc_method_handler(wrapped)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _wrap(
    label: str,
    handler: Handler,
    request_class: type[Message],
    metrics: ServingMetrics,
    plane: DataPlane | None,
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    type_name = request_class.DESCRIPTOR.full_name
    inflight = metrics.inflight_by_protocol["grpc"]

    async def behaviour(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        if plane is not None and not plane.admit():
            _finish(metrics, label, "UNAVAILABLE", started, counted=False)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        inflight.inc()
        try:
            try:
                request = request_class.FromString(data)
            except DecodeError as exc:
                raise InvalidInput(f"the request is not a valid {type_name} message") from exc
            response = (await handler(request, context)).SerializeToString()
        except asyncio.CancelledError:  # the client went away or the deadline passed
            _finish(metrics, label, "CANCELLED", started)
            raise
        except Exception as exc:
            status, message = status_for(exc)
            if status is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", label)
            # Record before abort(): it sends the status at once, so the client may look at
            # /metrics before this coroutine runs again.
            _finish(metrics, label, status.name, started)
            await context.abort(status, message)
            raise AssertionError("unreachable: abort() raises") from exc
        finally:
            if plane is not None:
                plane.release()
        _finish(metrics, label, "OK", started)
        return response

    return behaviour


def _finish(metrics: ServingMetrics, label: str, code: str, started: float, counted: bool = True) -> None:
    if counted:
        metrics.inflight_by_protocol["grpc"].dec()
    metrics.observe_request("grpc", label, code, time.perf_counter() - started)
