"""A constant-response ASGI app under uvicorn, run as `stratus serve` runs the registry.

    python benchmarks/bare_app.py --port 8000

Every request gets `200` with the same small JSON body, so its throughput is the
ceiling for any Python ASGI server on this machine. uvicorn.run() gets the arguments
that stratus.registry.server.run_server passes: one worker, the "auto" loop and HTTP
implementations (uvloop and httptools when installed), no access log, and no Server or
Date header.
"""

from __future__ import annotations

import argparse

import uvicorn

BODY = b'{"status":"ok"}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]

# With --manifest-sized, a body and headers of the sizes stratus sends for a manifest by tag
# (an image index of 1607 bytes and six headers), to separate uvicorn's cost per header and
# byte from the registry's own work.
_DIGEST = b"sha256:" + b"0" * 64
MANIFEST_BODY = b"{" + b" " * 1605 + b"}"
MANIFEST_HEADERS = [
    (b"content-type", b"application/vnd.oci.image.index.v1+json"),
    (b"docker-content-digest", _DIGEST),
    (b"etag", b'"' + _DIGEST + b'"'),
    (b"cache-control", b"public, max-age=1"),
    (b"docker-distribution-api-version", b"registry/2.0"),
    (b"content-length", str(len(MANIFEST_BODY)).encode()),
]

_response = (HEADERS, BODY)


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Send the constant response to every HTTP request, and complete lifespan startup and shutdown."""
    if scope["type"] == "http":
        headers, body = _response
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a constant JSON body with uvicorn, one worker.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--manifest-sized", action="store_true",
                        help="send a 1607-byte body with six headers, like stratus's manifest response")
    arguments = parser.parse_args()
    if arguments.manifest_sized:
        global _response
        _response = (MANIFEST_HEADERS, MANIFEST_BODY)
    uvicorn.run(
        app,
        host=arguments.host,
        port=arguments.port,
        workers=1,
        access_log=False,
        server_header=False,
        date_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
