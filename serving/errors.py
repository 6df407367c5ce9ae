"""The service's errors and the one table that maps them to gRPC status codes.

Every error a client can cause is a :class:`ServingError` subclass whose message names the problem and
is safe to send; anything else becomes INTERNAL with a generic message (the details are only logged).
"""

from __future__ import annotations

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


# The one status table (checked in order; subclasses before their bases).
STATUS_TABLE: tuple[tuple[type[ServingError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

INTERNAL_MESSAGE = "internal error; the server logged the details"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for ``error``."""
    for error_type, code in STATUS_TABLE:
        if isinstance(error, error_type):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
