"""HTTP helpers shared by the endpoints: bodies read under a limit, and the HTTP/1.1 protocol
with deadlines that uvicorn lacks.

**Bodies.** :func:`read_body` refuses a body by its ``Content-Length`` before reading anything,
and otherwise stops as soon as more than the limit has streamed in: a 300 MiB POST costs the
server at most the limit plus one chunk. (uvicorn stops reading the socket while the app does
not consume the body, so an endpoint that never reads it holds ~64 KiB.)

**Slow requests.** uvicorn times out idle keep-alive connections (``timeout_keep_alive``) but has
no deadline for a request to arrive: a client that sends one header line every few seconds holds
a connection for ever, and any byte cancels the keep-alive timer. :func:`protocol_class` makes
uvicorn's h11 protocol with a *request deadline*: from accept (or from the first byte of the next
request on a keep-alive connection) until the request's head and body have arrived, never reset
by arbitrary bytes. A WebSocket upgrade ends it (the WebSocket has its own timeouts). h11 (not
httptools) because it bounds the bytes of an incomplete request head (:data:`MAX_HEADER_BYTES`);
httptools would collect any number of header lines.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from ingest.config import DEFAULT_HTTP_REQUEST_TIMEOUT as REQUEST_TIMEOUT
from ingest.errors import InputError

MAX_HEADER_BYTES = 16 * 1024
"""Bytes of an incomplete request line + headers before the request is refused (400)."""

_TIMEOUT_TEXT = b"the request did not arrive in time\n"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n"
    b"\r\n"
    b"%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT)
)
"""Sent when the deadline passes before a request head is complete (nothing is being answered)."""
_RECEIVING = (h11.IDLE, h11.SEND_BODY)
"""The client's h11 states while a request is still arriving."""


class PayloadTooLargeError(InputError):
    """A request body over the endpoint's limit (413)."""

    status = 413


async def read_body(request: Request, limit: int, what: str = "the request body") -> bytes:
    """The request body, or :class:`PayloadTooLargeError` once it passes ``limit`` bytes
    (by ``Content-Length`` before reading, else while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} is larger than {limit} bytes ({int(declared)})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"{what} is larger than {limit} bytes")
    return bytes(body)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request to arrive (see the module doc)."""

    request_timeout: float = REQUEST_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._received = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._rearm(len(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timer; ours waits for a byte
        self._received = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _rearm(self, received: int) -> None:
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            self._cancel_deadline()
            return
        if self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            # a request is still coming in
            self._received += received
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)
        else:
            self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
            return
        if self.conn.their_state is h11.IDLE and self._received:
            # a head never completed, so the app answers nothing: say why we hang up
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()  # mid-body: the app sees http.disconnect


def protocol_class(request_timeout: float = REQUEST_TIMEOUT) -> type[DeadlineH11Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``, with this request deadline."""
    return type(
        "DeadlineH11Protocol", (DeadlineH11Protocol,), {"request_timeout": float(request_timeout)}
    )
