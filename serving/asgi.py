"""Plain ASGI helpers for the HTTP routes: read a body within a limit, send a finished reply.

What the service's endpoints (``serving/rest.py``) and the benchmark's plain no-op share; no Starlette
request or response objects (a measurable share of a single-image infer) and no TensorFlow import.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from .errors import PayloadTooLarge

JSON_TYPE = "application/json"


class Reply(NamedTuple):
    """A finished HTTP answer: body bytes, status and content type."""

    body: bytes
    status: int = 200
    content_type: bytes = JSON_TYPE.encode()
    headers: tuple[tuple[bytes, bytes], ...] = ()  # more response headers (lower-case names)


def json_reply(body: object, status: int = 200) -> Reply:
    # orjson: ~10x faster than the json module both ways (half the server's CPU per single-image call
    # went to json); numpy arrays and scalars are written directly, float32 in their shortest form.
    return Reply(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status)


async def send_reply(send: Send, reply: Reply, close: bool = False) -> None:
    """Send ``reply``; ``close``: end the connection after it (``connection: close``)."""
    headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % len(reply.body))]
    headers.extend(reply.headers)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (``name`` lower-case, as ASGI servers deliver them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or PayloadTooLarge past ``limit`` bytes (declared or received)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
