"""The service's errors and the one table that maps them to gRPC status codes and HTTP statuses.

Every error a client can cause is a :class:`ServingError` subclass whose message names the problem and
is safe to send; anything else becomes INTERNAL (HTTP 500) with a generic message (the details are only
logged). gRPC handlers (``serving/rpc.py``) and HTTP routes (``serving/rest.py``) both read this table.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc


class ServingError(Exception):
    """Base class: ``str(error)`` is sent to the client, so it must not contain internals."""


class InvalidInput(ServingError):
    """The request is malformed: wrong shape, byte length, dtype, range, NaN/inf, empty or too big."""


class ModelNotFound(ServingError):
    """No model of that name, or no loaded version of that number."""


class ModelUnavailable(ServingError):
    """Nothing loaded yet for the model, or the server is shutting down; retrying later may work."""


class Overloaded(ServingError):
    """The batching queue is full; the client should back off and retry."""


class PayloadTooLarge(ServingError):
    """An HTTP request body above ``max_body_bytes`` (gRPC refuses large messages by itself)."""


class Status(NamedTuple):
    grpc_code: grpc.StatusCode
    http_status: int

    @property
    def name(self) -> str:
        """The label used in metrics for every protocol (the gRPC status name)."""
        return self.grpc_code.name


# The one status table (checked in order; subclasses before their bases).
STATUS_TABLE: tuple[tuple[type[ServingError], Status], ...] = (
    (InvalidInput, Status(grpc.StatusCode.INVALID_ARGUMENT, 400)),
    (ModelNotFound, Status(grpc.StatusCode.NOT_FOUND, 404)),
    (ModelUnavailable, Status(grpc.StatusCode.UNAVAILABLE, 503)),
    (Overloaded, Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429)),
    (PayloadTooLarge, Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413)),
)
INTERNAL = Status(grpc.StatusCode.INTERNAL, 500)
OK = Status(grpc.StatusCode.OK, 200)

INTERNAL_MESSAGE = "internal error; the server logged the details"


def classify(error: BaseException) -> tuple[Status, str]:
    """The status (gRPC code and HTTP status) and the client-safe message for ``error``."""
    for error_type, status in STATUS_TABLE:
        if isinstance(error, error_type):
            return status, str(error)
    return INTERNAL, INTERNAL_MESSAGE


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and client-safe message for ``error``."""
    status, message = classify(error)
    return status.grpc_code, message
