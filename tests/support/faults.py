"""A fault-injecting HTTP proxy that sits between Stratus and moto's S3 server.

    proxy = FaultProxy(moto.port, seed=7)
    proxy.start()
    environment = s3_environment(proxy.endpoint, bucket)   # Stratus talks to the proxy
    proxy.set_faults(0.3)                  # 30 % of requests fail, the kind picked at random
    proxy.set_faults(0.0)                  # every request is forwarded again
    hold = proxy.hold(lambda request: request.method == "PUT" and request.key.endswith("/index.json"))
    hold.wait_arrived()                    # that request is now parked inside the proxy
    hold.release(forward=False)            # drop it, so S3 never receives it

The proxy is a threaded HTTP/1.1 server on a loopback port with keep-alive. Each request
is read whole (an `Expect: 100-continue` gets its 100 Continue first). Unless a fault or
a hold applies, it is sent to moto on a new connection, and the whole response is read and
sent back with its headers. Faults are drawn from a `random.Random` seeded at construction, so a run is
repeatable up to the order in which concurrent requests arrive.

Every request is logged in `exchanges` with its outcome, so a test can count retries or
check what reached S3.
"""

from __future__ import annotations

import enum
import http.client
import io
import random
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from support.processes import LOOPBACK

# Upper bound on any wait inside the proxy (a hold, a stall, a slow upstream), so that a
# forgotten hold cannot keep a thread alive after its test.
WAIT_LIMIT = 180.0

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "expect"})
_MAX_HEAD_BYTES = 64 * 1024

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId></Error>"
)


class Fault(enum.Enum):
    """What the proxy does to a request chosen to fail."""

    # Respond with 503 and S3's SlowDown error body. S3 never receives the request.
    SLOW_DOWN = "slow-down"
    # Close the client connection with a TCP reset. S3 never receives the request.
    RESET = "reset"
    # Send nothing until the client closes the connection (its read timeout) or the
    # proxy's stall limit passes. S3 never receives the request.
    STALL = "stall"
    # Forward the request, then send the response cut short and close the connection: the
    # headers and half of the body, or the status line alone when there is no body.
    TRUNCATE = "truncate"
    # Forward the request, so S3 applies it, then reset the connection instead of responding.
    DROP_RESPONSE = "drop-response"


ALL_FAULTS = tuple(Fault)


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One request as the proxy received it. `key` is the path without the bucket, decoded."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def key(self) -> str:
        """Return the object key of a path-style request (`/bucket/key` -> `key`)."""
        _, _, key = self.path.lstrip("/").partition("/")
        return unquote(key)

    @property
    def part_number(self) -> int | None:
        values = self.query.get("partNumber")
        return int(values[0]) if values else None

    def header(self, name: str) -> str | None:
        for header_name, value in self.headers:
            if header_name.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True, slots=True)
class Exchange:
    """A logged request and what became of it: `forwarded` with S3's status, a Fault, or `held`."""

    request: ProxiedRequest
    outcome: str
    status: int | None = None


RequestMatcher = Callable[[ProxiedRequest], bool]


@dataclass(eq=False)
class Hold:
    """Parks the `nth` request that `matcher` accepts until release() or the proxy stops."""

    matcher: RequestMatcher
    nth: int = 1
    seen: int = 0
    request: ProxiedRequest | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    _released: threading.Event = field(default_factory=threading.Event)
    _forward: bool = False

    def wait_arrived(self, timeout: float = WAIT_LIMIT) -> ProxiedRequest:
        """Wait until the held request arrives and return it. Raises AssertionError on timeout."""
        if not self.arrived.wait(timeout):
            raise AssertionError(f"the proxy saw only {self.seen} of the {self.nth} requests this hold waits for")
        assert self.request is not None
        return self.request

    def release(self, *, forward: bool) -> None:
        """Let the held request go on: to S3 when `forward`, else the connection is reset."""
        self._forward = forward
        self._released.set()


class FaultProxy:
    """A loopback HTTP proxy to `upstream_port` that fails a chosen share of requests."""

    def __init__(self, upstream_port: int, *, seed: int = 0, stall_limit: float = 30.0) -> None:
        self.upstream_port = upstream_port
        self.stall_limit = stall_limit
        self.exchanges: list[Exchange] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._rate = 0.0
        self._kinds: tuple[Fault, ...] = ALL_FAULTS
        self._fault_matcher: RequestMatcher | None = None
        self._holds: list[Hold] = []
        self._stopping = threading.Event()
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Return the `host:port` form that S3_ENDPOINT takes."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, release every hold and stall, and close the listening socket."""
        self._stopping.set()
        with self._lock:
            for hold in self._holds:
                hold.release(forward=False)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def set_faults(
        self, rate: float, kinds: Iterable[Fault] = ALL_FAULTS, matcher: RequestMatcher | None = None
    ) -> None:
        """Fail `rate` (0 to 1) of the requests that `matcher` accepts (all when None) with
        one of `kinds`, from the next request on."""
        kinds = tuple(kinds)
        if not 0.0 <= rate <= 1.0 or not kinds:
            raise ValueError(f"invalid fault settings: rate {rate}, kinds {kinds}")
        with self._lock:
            self._rate, self._kinds, self._fault_matcher = rate, kinds, matcher

    def hold(self, matcher: RequestMatcher, nth: int = 1) -> Hold:
        """Park the `nth` request that `matcher` accepts, as Hold describes."""
        hold = Hold(matcher, nth)
        with self._lock:
            self._holds.append(hold)
        return hold

    def count(self, predicate: Callable[[Exchange], bool]) -> int:
        with self._lock:
            return sum(1 for exchange in self.exchanges if predicate(exchange))

    def faults_injected(self) -> dict[str, int]:
        """Return how many requests ended in each Fault so far."""
        counts = {fault.value: 0 for fault in Fault}
        with self._lock:
            for exchange in self.exchanges:
                if exchange.outcome in counts:
                    counts[exchange.outcome] += 1
        return counts

    def wait_for(self, predicate: Callable[[list[Exchange]], bool], describe: str, timeout: float = WAIT_LIMIT) -> None:
        """Wait until `predicate(exchanges)` is true. Raises AssertionError naming `describe` on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.exchanges), timeout=timeout):
                raise AssertionError(f"the proxy never saw {describe}")

    def _record(self, request: ProxiedRequest, outcome: str, status: int | None = None) -> None:
        with self._changed:
            self.exchanges.append(Exchange(request, outcome, status))
            self._changed.notify_all()

    def _matching_hold(self, request: ProxiedRequest) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if hold.request is None and hold.matcher(request):
                    hold.seen += 1
                    if hold.seen == hold.nth:
                        hold.request = request
                        return hold
        return None

    def _choose_fault(self, request: ProxiedRequest) -> Fault | None:
        with self._lock:
            if self._rate <= 0.0:
                return None
            if self._fault_matcher is not None and not self._fault_matcher(request):
                return None
            if self._random.random() >= self._rate:
                return None
            return self._random.choice(self._kinds)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    proxy: FaultProxy


class _ConnectionClosed(Exception):
    """The client closed the connection between requests."""


class _Handler(socketserver.BaseRequestHandler):
    """Serves one client connection: requests in a keep-alive loop until one side closes."""

    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        connection: socket.socket = self.request
        connection.settimeout(WAIT_LIMIT)
        reader = connection.makefile("rb")
        try:
            while not proxy._stopping.is_set():
                try:
                    request = _read_request(reader, connection)
                except (_ConnectionClosed, OSError, ValueError):
                    return
                if not self._serve(proxy, connection, request):
                    return
        finally:
            reader.close()

    def _serve(self, proxy: FaultProxy, connection: socket.socket, request: ProxiedRequest) -> bool:
        """Respond to one request. Returns False when the connection must be closed."""
        hold = proxy._matching_hold(request)
        if hold is not None:
            proxy._record(request, "held")
            hold.arrived.set()
            if not hold._released.wait(WAIT_LIMIT) or not hold._forward or proxy._stopping.is_set():
                _reset(connection)
                return False
            return self._forward(proxy, connection, request, None)

        fault = proxy._choose_fault(request)
        if fault is Fault.SLOW_DOWN:
            proxy._record(request, fault.value, 503)
            headers = [("Content-Type", "application/xml"), ("x-amz-request-id", "FAULTPROXY")]
            body = b"" if request.method == "HEAD" else SLOW_DOWN_BODY
            _send_response(connection, 503, "Slow Down", headers, body, len(SLOW_DOWN_BODY))
            return True
        if fault is Fault.RESET:
            proxy._record(request, fault.value)
            _reset(connection)
            return False
        if fault is Fault.STALL:
            proxy._record(request, fault.value)
            _wait_for_close(connection, proxy.stall_limit, proxy._stopping)
            _reset(connection)
            return False
        return self._forward(proxy, connection, request, fault)

    def _forward(
        self, proxy: FaultProxy, connection: socket.socket, request: ProxiedRequest, fault: Fault | None
    ) -> bool:
        try:
            status, reason, headers, body = _call_upstream(proxy.upstream_port, request)
        except (OSError, http.client.HTTPException):
            proxy._record(request, "upstream-failed")
            _reset(connection)
            return False

        if fault is Fault.DROP_RESPONSE:
            proxy._record(request, fault.value, status)
            _reset(connection)
            return False
        if fault is Fault.TRUNCATE:
            proxy._record(request, fault.value, status)
            _send_truncated(connection, status, reason, headers, body, request.method == "HEAD")
            return False

        proxy._record(request, "forwarded", status)
        length = _content_length(headers, len(body)) if request.method == "HEAD" or status == 304 else len(body)
        try:
            _send_response(connection, status, reason, headers, body, length)
        except OSError:
            return False
        return True


def _read_request(reader: io.BufferedReader, connection: socket.socket) -> ProxiedRequest:
    head = _read_head(reader)
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    lowered = {name.lower(): value for name, value in headers}

    if lowered.get("expect", "").lower() == "100-continue":
        connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if lowered.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(reader)
    else:
        length = int(lowered.get("content-length") or 0)
        body = reader.read(length) if length else b""
        if len(body) != length:
            raise _ConnectionClosed()

    split = urlsplit(target)
    return ProxiedRequest(method, target, split.path, parse_qs(split.query, keep_blank_values=True),
                          tuple(headers), body)


def _read_head(reader: io.BufferedReader) -> bytes:
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(_MAX_HEAD_BYTES)
        if not line:
            raise _ConnectionClosed()
        if line in (b"\r\n", b"\n"):
            if lines:
                return b"".join(lines).rstrip(b"\r\n")
            continue
        lines.append(line.rstrip(b"\r\n") + b"\r\n")
        size += len(line)
        if size > _MAX_HEAD_BYTES:
            raise ValueError("request head too large")


def _read_chunked(reader: io.BufferedReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = reader.readline(1024)
        if not size_line:
            raise _ConnectionClosed()
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while reader.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        chunks.append(reader.read(size))
        reader.readline(1024)


def _call_upstream(port: int, request: ProxiedRequest) -> tuple[int, str, list[tuple[str, str]], bytes]:
    headers = {name: value for name, value in request.headers if name.lower() not in _HOP_BY_HOP}
    if request.body or request.method in ("PUT", "POST"):
        headers["Content-Length"] = str(len(request.body))
    upstream = http.client.HTTPConnection(LOOPBACK, port, timeout=WAIT_LIMIT)
    try:
        upstream.request(request.method, request.target, body=request.body, headers=headers)
        response = upstream.getresponse()
        body = response.read()
        return response.status, response.reason, response.getheaders(), body
    finally:
        upstream.close()


def _content_length(headers: list[tuple[str, str]], default: int) -> int:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)
    return default


def _response_head(status: int, reason: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_response(
    connection: socket.socket, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, length: int
) -> None:
    connection.sendall(_response_head(status, reason, headers, length) + body)


def _send_truncated(
    connection: socket.socket, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, is_head: bool
) -> None:
    head = _response_head(status, reason, headers, len(body))
    try:
        if len(body) >= 2 and not is_head:
            connection.sendall(head + body[: len(body) // 2])
        else:
            # http.client takes the end of the connection for the end of the headers.
            connection.sendall(head.split(b"\r\n", 1)[0] + b"\r\n")
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _wait_for_close(connection: socket.socket, limit: float, stopping: threading.Event) -> None:
    """Wait until the client closes the connection, `limit` seconds pass, or the proxy stops."""
    deadline = time.monotonic() + limit
    while not stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        readable, _, _ = select.select([connection], [], [], min(remaining, 0.2))
        if readable:
            try:
                if not connection.recv(65536, socket.MSG_PEEK):
                    return
            except OSError:
                return
            # The client sent more bytes, which it should not do while it waits, so drop them.
            connection.recv(65536)


def _reset(connection: socket.socket) -> None:
    """Close the connection with a TCP RST rather than a FIN."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass


@contextmanager
def running_proxy(upstream_port: int, *, seed: int = 0, stall_limit: float = 30.0) -> Iterator[FaultProxy]:
    """Start a FaultProxy to `upstream_port` and stop it when the block ends."""
    proxy = FaultProxy(upstream_port, seed=seed, stall_limit=stall_limit)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
