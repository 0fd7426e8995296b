"""Run moto's S3 server with object writes applied one at a time.

    python tests/support/moto_launcher.py -H 127.0.0.1 -p PORT

moto 5.x checks `If-Match` and `If-None-Match: *` on PutObject and then stores the object
as two separate steps without a lock (moto/s3/responses.py, `put_object`). Its threaded
server can therefore let two conditional writes of one key both succeed, which real S3
never does. In a test of 16 threads doing 400 compare-and-swap increments on one key,
plain `python -m moto.server` lost 7 and 9 increments in two runs when the interpreter's
switch interval was lowered to 1 µs to widen that window. With the default 5 ms interval
three runs lost none, because the race is rare there, but it remains possible.

This launcher wraps moto's WSGI application in a lock that every PUT, POST and DELETE
holds while moto handles it, so a conditional write is atomic against every other write,
as on S3. GET and HEAD take no lock and stay concurrent.

Trade-off: writes, including blob and part uploads, are handled one at a time inside the
server. Each request's body is read from the socket before the lock is taken, so only
moto's in-memory work is serialized; for the small blobs of the test suite that costs
little, but a test of upload throughput should use plain moto.
"""

from __future__ import annotations

import argparse
import io
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

_WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})

WsgiApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerializedWrites:
    """WSGI middleware that runs write requests one at a time."""

    def __init__(self, application: WsgiApplication) -> None:
        self._application = application
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _WRITE_METHODS:
            return self._application(environ, start_response)

        _buffer_request_body(environ)
        with self._lock:
            # moto's Flask app finishes the whole request, check and store included, before
            # it returns the response iterable, so the lock covers both steps.
            return list(self._application(environ, start_response))


def _buffer_request_body(environ: dict[str, Any]) -> None:
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("wsgi.input_terminated", None)


def main() -> None:
    parser = argparse.ArgumentParser(description="moto S3 server with one write at a time")
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("-p", "--port", type=int, required=True, help="TCP port to listen on")
    arguments = parser.parse_args()

    application = DomainDispatcherApplication(create_backend_app)
    run_simple(
        arguments.host,
        arguments.port,
        SerializedWrites(application),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
