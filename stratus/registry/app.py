"""The ASGI application: match the path, call the route handler, send the response.

Every response carries `Docker-Distribution-API-Version: registry/2.0`. Errors are
rendered here and only here. HEAD runs the GET code path and sends no body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from stratus import storage
from stratus.config import Config
from stratus.registry import errors
from stratus.registry.content import ContentReader
from stratus.registry.handlers import Handlers, Request, Response
from stratus.registry.index_cache import IndexCache
from stratus.registry.logs import AccessLog
from stratus.registry.metrics import RegistryMetrics
from stratus.registry.referrers import ReferrersFinder
from stratus.registry.routes import Match, Route, is_registry_path, match_path
from stratus.registry.types import Headers, Receive, Scope, Send

logger = logging.getLogger(__name__)

API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")
_READ_METHODS = frozenset({"GET", "HEAD"})
METRICS_PATH = "/metrics"
LIVENESS_PATH = "/healthz"
# Hot pulls repeat the same few paths; matching each once saves the parsing on every request.
MAX_REMEMBERED_PATHS = 4096
READINESS_PATH = "/readyz"


class RegistryApp:
    """The read-only registry as an ASGI callable."""

    def __init__(self, config: Config, store: storage.Storage) -> None:
        self.storage = store
        self._executor = ThreadPoolExecutor(max_workers=config.s3_max_connections, thread_name_prefix="stratus-s3")
        self._access_log = AccessLog(config.access_log)
        self._matches: dict[str, Match] = {}
        indexes = IndexCache(
            store, self._run_in_thread,
            freshness=config.index_freshness,
            max_entries=config.index_cache_entries,
            max_index_bytes=config.max_index_bytes,
        )
        content = ContentReader(
            store, self._run_in_thread,
            manifest_cache_bytes=config.manifest_cache_bytes,
            blob_cache_entries=config.blob_cache_entries,
            presign_expiry=config.presign_expiry,
        )
        handlers = Handlers(
            indexes, content, ReferrersFinder(indexes, content),
            freshness=config.index_freshness,
            send_blobs=config.blob_proxy or not store.can_presign,
        )
        self.metrics = _build_metrics(store, indexes, content)
        self._routes: dict[Route, Callable[[Request], Awaitable[Response]]] = {
            Route.BASE: handlers.base,
            Route.MANIFEST: handlers.manifest,
            Route.BLOB: handlers.blob,
            Route.TAGS: handlers.tags,
            Route.REFERRERS: handlers.referrers,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._handle_http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._handle_lifespan(receive, send)

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        raw_path = _raw_path(scope)

        route, response = await self._dispatch(method, raw_path, scope)
        await _send(send, receive, response, method == "HEAD")

        elapsed = time.perf_counter() - started
        self.metrics.observe_request(route, method if method in _READ_METHODS else "other", response.status, elapsed)
        if self._access_log.enabled:
            self._access_log.record(method, raw_path, response.status, round(elapsed * 1000, 3))

    async def _dispatch(self, method: str, raw_path: str, scope: Scope) -> tuple[str, Response]:
        """Return the route name (for metrics) and the response, errors rendered."""
        if method in _READ_METHODS and raw_path in (METRICS_PATH, LIVENESS_PATH, READINESS_PATH):
            return await self._operations_response(raw_path)

        route = "unknown"
        try:
            if is_registry_path(raw_path) and method not in _READ_METHODS:
                raise errors.MethodNotAllowed(detail={"method": method})
            match = self._match(raw_path)
            route = match.route.value
            return route, await self._respond(method, match, raw_path, scope)
        except errors.RegistryError as error:
            return route, _error_response(error)
        except Exception:
            logger.exception("Unhandled error while handling %s %s; responding 500.", method, raw_path)
            return route, _error_response(errors.InternalError())

    def _match(self, raw_path: str) -> Match:
        """Match a path, remembering up to MAX_REMEMBERED_PATHS successful matches."""
        match = self._matches.get(raw_path)
        if match is None:
            match = match_path(raw_path)
            if len(self._matches) >= MAX_REMEMBERED_PATHS:
                self._matches.clear()
            self._matches[raw_path] = match
        return match

    async def _operations_response(self, raw_path: str) -> tuple[str, Response]:
        """Respond to the metrics, liveness and readiness endpoints, which live outside /v2/."""
        if raw_path == METRICS_PATH:
            content_type = self.metrics.content_type.encode()
            return "metrics", Response(200, [(b"content-type", content_type)], self.metrics.render())
        if raw_path == LIVENESS_PATH:
            return "health", Response(200, [(b"content-type", b"application/json")], b'{"status":"ok"}')

        try:
            await self._run_in_thread(self.storage.ping)
        except storage.StorageError as error:
            logger.warning("Readiness check failed: the storage is unreachable (%s).", error)
            body = orjson.dumps({"status": "unavailable", "reason": "the storage backend is unreachable"})
            return "ready", Response(503, [(b"content-type", b"application/json")], body)
        return "ready", Response(200, [(b"content-type", b"application/json")], b'{"status":"ready"}')

    async def _respond(self, method: str, match: Match, raw_path: str, scope: Scope) -> Response:
        if_none_match, byte_range = _conditional_headers(scope)
        request = Request(
            method=method,
            match=match,
            query=scope.get("query_string", b""),
            if_none_match=if_none_match,
            range=byte_range,
        )
        try:
            return await self._routes[match.route](request)
        except storage.StorageThrottled as error:
            logger.warning("S3 is throttling: %s (responding 429 to %s %s).", error, method, raw_path)
            self.metrics.s3_errors.labels("throttled").inc()
            raise errors.TooManyRequests() from None
        except storage.StorageError as error:
            logger.error("S3 is unavailable: %s (responding 503 to %s %s).", error, method, raw_path)
            self.metrics.s3_errors.labels("unavailable").inc()
            raise errors.StorageUnavailable() from None

    async def _handle_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._access_log.flush()
                logger.info("Stratus worker stopped.")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _run_in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))


def _build_metrics(store: storage.Storage, indexes: IndexCache, content: ContentReader) -> RegistryMetrics:
    metrics = RegistryMetrics()

    def s3_requests() -> dict[tuple[str, ...], int]:
        return {(): store.requests_sent}

    def cache_counts(position: int) -> dict[tuple[str, ...], int]:
        counts = {"index": (indexes.hits, indexes.misses), **content.cache_counts()}
        return {(cache,): pair[position] for cache, pair in counts.items()}

    metrics.add_counters("stratus_s3_requests", "Requests sent to S3, retries included.", [], s3_requests)
    metrics.add_counters("stratus_cache_hits", "Lookups answered from memory, by cache.", ["cache"],
                         lambda: cache_counts(0))
    metrics.add_counters("stratus_cache_misses", "Lookups that needed S3 (or a new signature), by cache.",
                         ["cache"], lambda: cache_counts(1))
    return metrics


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1").partition("?")[0]
    return scope["path"]


def _conditional_headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """Return the If-None-Match and Range header values of a request, in one pass."""
    if_none_match = byte_range = None
    for key, value in scope["headers"]:
        if key == b"if-none-match":
            if_none_match = value
        elif key == b"range":
            byte_range = value
    return if_none_match, byte_range


def _error_response(error: errors.RegistryError) -> Response:
    body = orjson.dumps({"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]})
    headers: Headers = [(b"content-type", b"application/json"), *error.extra_headers()]
    return Response(error.status, headers, body)


async def _send(send: Send, receive: Receive, response: Response, is_head: bool) -> None:
    headers = response.headers
    headers.append(API_VERSION_HEADER)
    if response.status != 304:
        length = len(response.body) if response.content_length is None else response.content_length
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.stream is not None and not is_head:
        await _send_stream(send, receive, response.stream)
        return
    body = b"" if is_head or response.status == 304 else response.body
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send: Send, receive: Receive, stream: AsyncGenerator[bytes, None]) -> None:
    """Send a blob chunk by chunk, and stop reading it as soon as the client goes away."""
    disconnected = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
    try:
        async for chunk in stream:
            if disconnected.is_set():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except storage.StorageError as error:
        # The status line is gone already. Returning without the last body message makes
        # uvicorn close the connection, so the client sees fewer bytes than Content-Length.
        logger.error("Sending a blob failed part way, closing the connection: %s.", error)
        return
    finally:
        watcher.cancel()
        await stream.aclose()
    await send({"type": "http.response.body", "body": b""})


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
