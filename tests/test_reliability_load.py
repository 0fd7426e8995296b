"""Load on the real server: 50,000 mixed pull requests over 256 keep-alive connections.

The client is raw asyncio HTTP/1.1 on uvloop rather than httpx, to keep its share of the
CPU small when it runs on the server's cores. Each connection sends its next request when
the previous response is complete, and every response is checked: status, digest header,
and for tags/list the body. The test counts requests and errors and never measures time.
The time limits only stop a hung run.

Memory and open files are read from /proc after a warm-up and again at the end, with the
256 connections open both times, so a leak per request shows as growth.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from stratus.storage import Storage
from support.layouts import AMD64, ARM64, ARTIFACT, LayoutDescription, LayoutSpec, generate_layout, load_layout_into_bucket
from support.processes import LOOPBACK

CONNECTIONS = 256
TOTAL_REQUESTS = 50_000
WARM_UP_REQUESTS = 10_000
# Generous bounds over the 40,000 requests after warm-up: they catch a leak of about 520
# bytes or more per request, or of one socket or file per 2,500 requests.
MAX_RSS_GROWTH_BYTES = 20 * 1024 * 1024
MAX_FD_GROWTH = 16
# Stops a hung run. The test asserts nothing about speed.
PHASE_TIME_LIMIT = 300.0
READ_TIME_LIMIT = 60.0
REPOSITORIES = ("load/app", "load/other")


@dataclass(frozen=True, slots=True)
class Probe:
    """A request and the response it must get."""

    request: bytes
    status: int
    # Bytes that must appear in the response head, such as a Docker-Content-Digest header.
    head_contains: bytes = b""
    body: bytes | None = None


def _probes(layouts: dict[str, LayoutDescription]) -> list[Probe]:
    probes = []
    for repository, layout in layouts.items():
        image = layout.images["linux/arm64"]
        layer = image.layers[-1]

        def request(method: str, path: str) -> bytes:
            return f"{method} /v2/{repository}/{path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode()

        digest_header = f"docker-content-digest: {layout.digest}".encode()
        probes += [
            Probe(request("GET", "manifests/v1"), 200, digest_header),
            Probe(request("GET", f"manifests/{layout.digest}"), 200, digest_header),
            Probe(request("GET", f"manifests/{image.manifest}"), 200, f"docker-content-digest: {image.manifest}".encode()),
            Probe(request("HEAD", f"blobs/{layer}"), 200, f"content-length: {len(layout.blobs[layer])}".encode()),
            Probe(request("GET", f"blobs/{layer}"), 307, b"location: http://"),
            Probe(request("GET", "tags/list"), 200, b"content-type: application/json",
                  orjson.dumps({"name": repository, "tags": ["v1"]})),
        ]
    return probes


@dataclass
class LoadCounts:
    sent: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)


class Connection:
    """One keep-alive connection that sends probes one at a time and checks each response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, probe: Probe) -> str | None:
        """Send one request and read its response. Returns a description of what was wrong, or None."""
        self.writer.write(probe.request)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), READ_TIME_LIMIT)
        status = int(head[9:12])
        lowered = head.lower()
        length = 0
        start = lowered.find(b"\r\ncontent-length: ")
        if start >= 0:
            end = lowered.index(b"\r\n", start + 2)
            length = int(lowered[start + 18:end])
        is_head = probe.request.startswith(b"HEAD ")
        body = b"" if is_head or length == 0 else await asyncio.wait_for(
            self.reader.readexactly(length), READ_TIME_LIMIT
        )

        if status != probe.status:
            return f"{probe.request.split(b' ', 2)[1].decode()}: status {status}, expected {probe.status}"
        if probe.head_contains not in lowered:
            return f"{probe.request.split(b' ', 2)[1].decode()}: no {probe.head_contains.decode()!r} in {head!r}"
        if probe.body is not None and body != probe.body:
            return f"{probe.request.split(b' ', 2)[1].decode()}: body {body[:200]!r}"
        return None


async def _run_phase(connections: list[Connection], probes: Iterator[Probe], requests: int, counts: LoadCounts) -> None:
    """Send `requests` probes over all connections, each connection one request at a time."""
    errors = counts.errors
    target = counts.sent + requests

    async def drive(connection: Connection) -> None:
        while counts.sent < target:
            counts.sent += 1
            try:
                problem = await connection.exchange(next(probes))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as error:
                errors.append(f"connection failed: {error!r}")
                return
            counts.completed += 1
            if problem is not None:
                errors.append(problem)

    await asyncio.wait_for(asyncio.gather(*(drive(connection) for connection in connections)), PHASE_TIME_LIMIT)


def _resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _load(port: int, pid: int, probes: list[Probe]) -> dict[str, Any]:
    streams = [
        await asyncio.open_connection(LOOPBACK, port, limit=1024 * 1024) for _ in range(CONNECTIONS)
    ]
    connections = [Connection(reader, writer) for reader, writer in streams]
    cycle = itertools.cycle(probes)
    counts = LoadCounts()
    try:
        await _run_phase(connections, cycle, WARM_UP_REQUESTS, counts)
        warm = {"rss": _resident_bytes(pid), "fds": _open_files(pid), "completed": counts.completed}
        await _run_phase(connections, cycle, TOTAL_REQUESTS - WARM_UP_REQUESTS, counts)
        end = {"rss": _resident_bytes(pid), "fds": _open_files(pid), "completed": counts.completed}
    finally:
        for connection in connections:
            connection.writer.close()
    return {"warm": warm, "end": end, "errors": counts.errors, "completed": counts.completed}


@pytest.fixture
def layouts(tmp_path: Path, storage: Storage) -> dict[str, LayoutDescription]:
    loaded = {}
    for number, repository in enumerate(REPOSITORIES):
        spec = LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT, app_payload_size=number)
        layout = generate_layout(tmp_path / f"layout-{number}", spec)
        load_layout_into_bucket(storage, repository, layout, "v1")
        loaded[repository] = layout
    return loaded


def test_load_mixed_pulls_stay_flat(registry_factory: Any, layouts: dict[str, LayoutDescription]) -> None:
    registry = registry_factory()
    probes = _probes(layouts)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_load(registry.port, registry.pid, probes))

    assert result["errors"] == []
    assert result["completed"] == TOTAL_REQUESTS
    rss_growth = result["end"]["rss"] - result["warm"]["rss"]
    assert rss_growth < MAX_RSS_GROWTH_BYTES, result
    assert result["end"]["fds"] <= result["warm"]["fds"] + MAX_FD_GROWTH, result
    assert "Traceback" not in registry.stderr_text()
