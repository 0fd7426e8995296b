"""uvicorn's httptools protocol with limits on the request head.

httptools buffers a request line and headers of any size, and uvicorn waits for them
for as long as a client keeps the connection open. One client could therefore hold
memory without bound, or many idle connections, with little effort. This subclass
rejects a head larger than MAX_HEAD_BYTES with 431 and closes a connection whose head
has not arrived within HEAD_TIMEOUT seconds with 408. Everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Request line and headers together; registry requests need a few kilobytes.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 10.0

_ERROR_RESPONSES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds the size of a request head and the time it may take.

    One timer per connection checks the head every half HEAD_TIMEOUT, so a slow head is
    closed between 1 and 1.5 times HEAD_TIMEOUT after it began. A timer per request
    would cost the hot path more than everything else this class does.
    """

    def __init__(self, *arguments: Any, **keywords: Any) -> None:
        super().__init__(*arguments, **keywords)
        self._awaiting_head = True
        self._head_bytes = 0
        self._head_started = 0.0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT / 2, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._reject(431, "request head larger than %d bytes" % MAX_HEAD_BYTES)
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes on this connection begin the next request's head.
        self._awaiting_head = True
        self._head_bytes = 0

    def _check_head(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # An idle keep-alive connection (a request done, nothing new begun) is uvicorn's
        # to close with its keep-alive timeout.
        idle_keep_alive = self._head_bytes == 0 and self.cycle is not None
        if self._awaiting_head and not idle_keep_alive:
            if self.loop.time() - self._head_started >= HEAD_TIMEOUT:
                self._reject(408, "request head not received within %g seconds" % HEAD_TIMEOUT)
                return
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT / 2, self._check_head)

    def _reject(self, status: int, reason: str) -> None:
        self.logger.warning("Closing connection from %s: %s.", self.client, reason)
        body = b'{"errors":[{"code":"UNSUPPORTED","message":"' + reason.encode() + b'"}]}'
        self.transport.write(
            _ERROR_RESPONSES[status]
            + b"content-type: application/json\r\n"
            + b"content-length: " + str(len(body)).encode() + b"\r\n"
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()
        self._awaiting_head = False
