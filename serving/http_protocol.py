"""uvicorn's httptools protocol with the limits every production HTTP server has: header size and count,
and timeouts for connections that never send a request, or send its headers or its body too slowly.

uvicorn bounds none of these with httptools (``h11_max_incomplete_event_size`` only applies to its
slower h11 protocol, and its keep-alive timer only starts after a first answer), and llhttp keeps
collecting headers for as long as they come: 64 MiB of headers cost 5 s of the event loop. The limits
are counted as the bytes arrive, so a refused request costs at most one read (256 KiB) past the limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

LINGER_SECONDS = 1.0  # after a 431, read and drop what the client still sends, so it can read the answer


class HttpLimits(NamedTuple):
    max_header_bytes: int  # request line plus headers
    max_headers: int
    idle_seconds: float  # a connection that has not sent a byte of its first request
    header_seconds: float  # from a request's first byte to the end of its headers
    body_seconds: float  # from the end of a request's headers to the end of its body


class _HeadersTooLarge(Exception):
    """Raised inside a parser callback; httptools turns it into HttpParserCallbackError."""


def limited_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass enforcing ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._in_headers = True  # the next bytes belong to a request line or headers
            self._in_body = False  # the headers are complete, the body is not
            self._header_bytes = 0
            self._header_count = 0
            self._field_bytes = 0
            self._over_limit = False
            self._refused = False
            self._timer: asyncio.TimerHandle | None = None
            self._arm(limits.idle_seconds)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if (self._in_headers or self._in_body) and not self.transport.is_closing():
                # Never sent a request, or its headers or body too slowly. Closing mid-body makes the
                # app's receive() return http.disconnect: the request is counted CANCELLED.
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering after a 431: drop the rest
            if self._in_headers:
                if self._header_bytes == 0:  # the first byte of a request: its headers' clock starts
                    self._arm(limits.header_seconds)
                self._header_bytes += len(data)
            super().data_received(data)  # a callback's _HeadersTooLarge ends in send_400_response
            if self._in_headers and self._header_bytes > limits.max_header_bytes and not self._refused:
                self._refuse()  # the headers are still incomplete and already too large

        def send_400_response(self, msg: str) -> None:
            if self._over_limit:
                self._refuse()
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_count = 0
            self._field_bytes = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            # Counted here as well as per read: a read that also ends the headers is not checked after.
            self._field_bytes += size
            if self._header_count > limits.max_headers or self._field_bytes > limits.max_header_bytes:
                self._over_limit = True
                raise _HeadersTooLarge()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._in_body = True  # until on_message_complete, which follows at once without a body
            self._arm(limits.body_seconds)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()
            super().on_message_complete()
            self._in_headers = True  # idle from here on is the keep-alive timer's business

        def _refuse(self) -> None:
            self._refused = True
            self._disarm()
            body = b'{"error": "the request headers are too large: at most %d headers and %d bytes"}' % (
                limits.max_headers,
                limits.max_header_bytes,
            )
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return LimitedHttpToolsProtocol
