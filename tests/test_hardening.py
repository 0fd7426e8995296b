"""Regression tests for hostile and careless input found by trying Stratus as a new user would."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stratus.config import ConfigError, load_config
from stratus.registry.errors import RangeNotSatisfiable
from stratus.registry.protocol import HEAD_TIMEOUT, MAX_HEAD_BYTES
from stratus.registry.ranges import parse_range
from stratus.storage import NotFound, Storage
from stratus.storage.local import LocalStorage
from support.layouts import generate_layout
from support.processes import child_environment
from support.registry import SERVE_COMMAND


def _read_reply(connection: socket.socket) -> bytes:
    reply = b""
    while chunk := connection.recv(65536):
        reply += chunk
    return reply


# ---------------------------------------------------------------- configuration


def test_misspelt_setting_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"S3_ENDPIONT": "minio:9000", "S3_ACCESS_KEY_ID": "a", "S3_SECRET_ACCESS_KEY": "b"})
    assert str(caught.value) == (
        "S3_ENDPIONT is not a Stratus setting (did you mean S3_ENDPOINT?): see stratus serve --help for the list"
    )


def test_credentials_without_endpoint_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"S3_ACCESS_KEY_ID": "a", "S3_SECRET_ACCESS_KEY": "b"})
    assert str(caught.value) == (
        "S3_ACCESS_KEY_ID is set but S3_ENDPOINT is not: set S3_ENDPOINT to use S3, "
        "or unset the S3_* variables to use the directory STRATUS_DATA_DIR"
    )


def test_unusable_data_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [*SERVE_COMMAND], env=child_environment({"STRATUS_DATA_DIR": str(blocker / "data")}),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"stratus: configuration error: STRATUS_DATA_DIR={str(blocker / 'data')!r} is unusable: Not a directory\n"
    )


# ---------------------------------------------------------------- ranges and pagination


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (b"bytes=0-9", 100, (0, 9)),
        (b"BYTES=0-9", 100, (0, 9)),
        (b"bytes=90-", 100, (90, 99)),
        (b"bytes=-10", 100, (90, 99)),
        (b"bytes=-500", 100, (0, 99)),
        (b"bytes=50-5000", 100, (50, 99)),
        (b"bytes=9-0", 100, None),
        (b"bytes=0-1,4-5", 100, None),
        (b"items=0-1", 100, None),
        (b"bytes=-", 100, None),
        (b"bytes=" + b"9" * 5000 + b"-", 100, None),
        (None, 100, None),
    ],
)
def test_parse_range(header: bytes | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [(b"bytes=100-", 100), (b"bytes=-0", 100), (b"bytes=-5", 0),
                                               (b"bytes=0-0", 0)])
def test_parse_range_unsatisfiable(header: bytes, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.extra_headers() == [(b"content-range", f"bytes */{size}".encode())]


def test_pagination_rejects_unicode_and_huge_numbers(registry: Any, storage: Storage) -> None:
    storage.put("library/app/index.json", b'{"schemaVersion":2,"manifests":[]}', content_type="application/json")
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        for value in ("\u00b2", "1" * 5000, "0x10"):
            response = client.get("/v2/app/tags/list", params={"n": value})
            assert response.status_code == 400
            assert response.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


# ---------------------------------------------------------------- request heads


def test_oversized_request_head_rejected(registry: Any) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as connection:
        connection.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(MAX_HEAD_BYTES // 8192 + 2):
                connection.sendall(b"a" * 8192)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = _read_reply(connection)
        except ConnectionResetError:
            # The server closed with our unread bytes in its buffer, and TCP may then reset
            # the connection before the 431 arrives. The log shows the rejection either way.
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
    assert f"request head larger than {MAX_HEAD_BYTES} bytes" in registry.stderr_text()
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        assert client.get("/v2/").status_code == 200


def test_incomplete_request_head_times_out(registry: Any) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=HEAD_TIMEOUT * 3) as connection:
        connection.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        reply = _read_reply(connection)  # the server closes the connection; nothing here is timed
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_silent_connection_closed(registry: Any) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=HEAD_TIMEOUT * 3) as connection:
        reply = _read_reply(connection)
    assert reply.startswith(b"HTTP/1.1 408 ")


# ---------------------------------------------------------------- bucket contents


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"metric {name} not found")


def test_layer_on_manifests_route_read_once(registry_factory: Any, storage: Storage) -> None:
    layer = os.urandom(1024 * 1024)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    storage.put(f"library/app/blobs/sha256/{digest[7:]}", layer, content_type="application/octet-stream")
    storage.put("library/app/index.json", b'{"schemaVersion":2,"manifests":[]}', content_type="application/json")
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "600"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(5):
            response = client.get(f"/v2/app/manifests/{digest}")
            assert response.status_code == 404
            assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        # index.json once, the layer once.
        assert _metric(client, "stratus_s3_requests_total") == 2
    assert server.stderr_text().count("is not a manifest") == 1


def test_referrers_survive_corrupt_manifest(registry: Any, storage: Storage) -> None:
    good = orjson.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                                    "size": 2},
                         "layers": [],
                         "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                     "digest": "sha256:" + "a" * 64, "size": 1}})
    good_digest = "sha256:" + hashlib.sha256(good).hexdigest()
    bad_digest = "sha256:" + "b" * 64
    storage.put(f"library/app/blobs/sha256/{good_digest[7:]}", good, content_type="application/octet-stream")
    storage.put(f"library/app/blobs/sha256/{bad_digest[7:]}", b"{}", content_type="application/octet-stream")
    entries = [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bad_digest, "size": 2,
         "annotations": {"org.opencontainers.image.ref.name": "broken"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": good_digest, "size": len(good)},
    ]
    storage.put("library/app/index.json", orjson.dumps({"schemaVersion": 2, "manifests": entries}),
                content_type="application/json")
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        response = client.get(f"/v2/app/referrers/sha256:{'a' * 64}")
    assert response.status_code == 200
    assert [entry["digest"] for entry in response.json()["manifests"]] == [good_digest]


# ---------------------------------------------------------------- local directory


def test_local_storage_refuses_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("outside")
    storage = LocalStorage(tmp_path / "data")
    (tmp_path / "data/library/app/blobs/sha256").mkdir(parents=True)
    (tmp_path / "data/library/app/blobs/sha256" / ("c" * 64)).symlink_to(outside)
    with pytest.raises(NotFound):
        storage.get(f"library/app/blobs/sha256/{'c' * 64}", max_bytes=100)
    with pytest.raises(NotFound):
        storage.stat(f"library/app/blobs/sha256/{'c' * 64}")


def test_local_storage_removes_old_temporary_files(tmp_path: Path) -> None:
    LocalStorage(tmp_path)
    leftover = tmp_path / ".stratus/tmp/leftover"
    leftover.write_bytes(b"x")
    recent = tmp_path / ".stratus/tmp/recent"
    recent.write_bytes(b"y")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    LocalStorage(tmp_path)
    assert not leftover.exists()
    assert recent.exists()


def test_abandoned_download_stops_reading(tmp_path: Path, registry_factory: Any) -> None:
    data_dir = tmp_path / "data"
    storage = LocalStorage(data_dir)
    blob = os.urandom(8 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    storage.put(f"library/app/blobs/sha256/{digest[7:]}", blob, content_type="application/octet-stream")
    storage.put("library/app/index.json", b'{"schemaVersion":2,"manifests":[]}', content_type="application/json")
    server = registry_factory(env={"STRATUS_DATA_DIR": str(data_dir)})

    async def abandon() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /v2/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.read(1024)
        writer.close()

    for _ in range(3):
        asyncio.run(abandon())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get(f"/v2/app/blobs/{digest}").content == blob


# ---------------------------------------------------------------- pusher


def _push_command(
    layout: Path, target: str, environment: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE_COMMAND[:-1], "push", str(layout), target, *options],
        env=child_environment(environment), capture_output=True, text=True, timeout=120,
    )


def test_push_keeps_young_uploads_unless_asked(tmp_path: Path) -> None:
    layout = generate_layout(tmp_path / "layout")
    environment = {"STRATUS_DATA_DIR": str(tmp_path / "data")}
    storage = LocalStorage(tmp_path / "data")
    # A young upload may belong to another push still running, so a push leaves it alone.
    young = storage.create_multipart_upload("library/app/blobs/sha256/" + "d" * 64, content_type="x")

    assert _push_command(layout.path, "app:1", environment).returncode == 0
    assert [upload.upload_id for upload in storage.list_multipart_uploads("library/app/")] == [young]

    result = _push_command(layout.path, "app:2", environment, "--abort-uploads-older-than", "0")
    assert result.returncode == 0, result.stderr
    assert storage.list_multipart_uploads("library/app/") == []


def test_push_refuses_index_beyond_registry_limit(tmp_path: Path) -> None:
    layout = generate_layout(tmp_path / "layout")
    data_dir = tmp_path / "data"
    storage = LocalStorage(data_dir)
    padding = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "e" * 64,
                "size": 1, "annotations": {"org.opencontainers.image.ref.name": f"t{number}"}}
               for number in range(12)]
    original = orjson.dumps({"schemaVersion": 2, "manifests": padding})
    storage.put("library/app/index.json", original, content_type="application/json")
    environment = {"STRATUS_DATA_DIR": str(data_dir), "STRATUS_MAX_INDEX_BYTES": str(len(original) + 100)}

    result = _push_command(layout.path, "app:new", environment)
    assert result.returncode == 1
    limit = len(original) + 100
    assert f"more than the {limit} bytes the registry reads (STRATUS_MAX_INDEX_BYTES)" in result.stderr
    assert (data_dir / "library/app/index.json").read_bytes() == original


def test_push_rejects_fifo_index(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    os.mkfifo(layout / "index.json")
    result = _push_command(layout, "app:1", {"STRATUS_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1
    assert result.stderr == f"stratus push: index.json of layout directory {layout} is not a regular file\n"
