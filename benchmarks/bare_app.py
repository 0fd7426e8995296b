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


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Send BODY to every HTTP request, and complete lifespan startup and shutdown."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
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
    arguments = parser.parse_args()
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
