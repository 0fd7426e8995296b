"""Concurrent pushes to one repository, and a push killed with SIGKILL during its part uploads."""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from stratus.config import load_config
from stratus.push import push_oci_layout
from stratus.storage import Storage
from support.layouts import REF_NAME, LayoutSpec, generate_layout
from support.processes import LOOPBACK, child_environment

MIB = 1024 * 1024
PUSH_COMMAND = [sys.executable, "-m", "stratus", "push"]
# Upper bound on waiting for a child or a proxy event, so that a hang fails the test instead
# of blocking the run. No assertion depends on how fast anything happens.
HANG_LIMIT = 180.0


@pytest.mark.atomic_s3
def test_ten_concurrent_pushes_keep_all_tags(
    tmp_path: Path, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    layouts = [
        generate_layout(tmp_path / f"image-{number}.tar", LayoutSpec(app_payload_size=100 + number))
        for number in range(10)
    ]
    assert len({layout.digest for layout in layouts}) == 10

    environment = child_environment(stratus_env)
    children = [
        subprocess.Popen(
            [*PUSH_COMMAND, str(layout.path), f"team/app:tag-{number}"],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for number, layout in enumerate(layouts)
    ]
    outputs = [child.communicate(timeout=HANG_LIMIT) for child in children]
    for child, (stdout, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr

    index = orjson.loads(bucket_client.get_object(Bucket=bucket, Key="team/app/index.json")["Body"].read())
    tags = {entry["annotations"][REF_NAME]: entry["digest"] for entry in index["manifests"]}
    assert tags == {f"tag-{number}": layout.digest for number, layout in enumerate(layouts)}
    assert len(index["manifests"]) == 10
    for number, (stdout, _) in enumerate(outputs):
        assert stdout.strip() == layouts[number].digest


class PartBlockingProxy:
    """An HTTP proxy to moto that never responds to UploadPart requests for part 2 or later.

    Those requests wait until stop(), so a push stays inside its multipart upload for as
    long as the test needs. Every request it responded to is recorded in `answered`.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.condition = threading.Condition()
        self.answered: list[tuple[str, str, int]] = []
        self.held: list[str] = []
        self._released = threading.Event()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_until(self, condition: Callable[[], bool], describe: str) -> None:
        with self.condition:
            if not self.condition.wait_for(condition, timeout=HANG_LIMIT):
                raise AssertionError(f"proxy never saw {describe}; answered: {self.answered}, held: {self.held}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def _forward(self) -> None:
                body = self._read_body()
                query = parse_qs(urlsplit(self.path).query)
                if self.command == "PUT" and int(query.get("partNumber", ["0"])[0]) >= 2:
                    with proxy.condition:
                        proxy.held.append(self.path)
                        proxy.condition.notify_all()
                    proxy._released.wait()
                    self.close_connection = True
                    return

                headers = {
                    name: value for name, value in self.headers.items()
                    if name.lower() not in ("transfer-encoding", "expect", "connection", "content-length")
                }
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(LOOPBACK, proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()

                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                with proxy.condition:
                    proxy.answered.append((self.command, self.path, response.status))
                    proxy.condition.notify_all()

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

        return Handler


@pytest.fixture
def part_blocking_proxy(bucket_endpoint: str) -> Iterator[PartBlockingProxy]:
    proxy = PartBlockingProxy(int(bucket_endpoint.rsplit(":", 1)[1]))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def live_processes_in_group(group: int) -> list[int]:
    """Return the ids of processes in the process group that have not exited (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            members.append(int(entry))
    return members


def test_killed_push_leaves_index_and_resumes(
    tmp_path: Path, storage: Storage, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
    part_blocking_proxy: PartBlockingProxy,
) -> None:
    earlier = generate_layout(tmp_path / "earlier.tar", LayoutSpec(app_payload_size=10))
    push_oci_layout(storage, bucket, earlier.path, "acme/app", "stable", log_output=None)
    index_before = bucket_client.get_object(Bucket=bucket, Key="acme/app/index.json")["Body"].read()

    layout = generate_layout(tmp_path / "image.tar", LayoutSpec(app_payload_size=12 * MIB))
    image = next(iter(layout.images.values()))
    big_layer = image.layers[-1]
    small_blobs = [digest for digest in (image.config, *image.layers[:-1])]
    assert len(layout.blobs[big_layer]) > 10 * MIB

    environment = child_environment({**stratus_env, "S3_ENDPOINT": part_blocking_proxy.endpoint})
    child = subprocess.Popen(
        [*PUSH_COMMAND, str(layout.path), "acme/app:new", "-j", "2", "--part-size", "5MiB",
         "--multipart-threshold", "5MiB"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        def part_one_sent_and_small_blobs_stored() -> bool:
            answered = {(method, urlsplit(path).path, status) for method, path, status in part_blocking_proxy.answered}
            part_one = any(
                method == "PUT" and parse_qs(urlsplit(path).query).get("partNumber") == ["1"] and status == 200
                for method, path, status in part_blocking_proxy.answered
            )
            small_stored = all(
                ("PUT", f"/{bucket}/acme/app/blobs/{digest.replace(':', '/')}", 200) in answered for digest in small_blobs
            )
            return part_one and small_stored and bool(part_blocking_proxy.held)

        part_blocking_proxy.wait_until(part_one_sent_and_small_blobs_stored, "part 1 and the small blobs")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=HANG_LIMIT) == -signal.SIGKILL

        # The part workers notice their parent died and exit on their own.
        deadline = time.monotonic() + HANG_LIMIT
        while live_processes_in_group(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_processes_in_group(child.pid) == []
    finally:
        if child.poll() is None:
            child.kill()
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    assert bucket_client.get_object(Bucket=bucket, Key="acme/app/index.json")["Body"].read() == index_before
    keys = {item["Key"] for item in bucket_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"acme/app/blobs/{big_layer.replace(':', '/')}" not in keys
    assert f"acme/app/blobs/{layout.digest.replace(':', '/')}" not in keys
    open_uploads = bucket_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [upload["Key"] for upload in open_uploads] == [f"acme/app/blobs/{big_layer.replace(':', '/')}"]

    output = io.StringIO()
    result = push_oci_layout(
        storage, bucket, layout.path, "acme/app", "new", log_output=output, config=load_config(stratus_env),
        blob_upload_concurrency=2, multipart_threshold=5 * MIB, part_size=5 * MIB,
    )
    assert set(map(str, result.skipped)) == set(small_blobs)
    assert set(map(str, result.uploaded)) == {big_layer, layout.digest}
    assert f"acme/app/blobs/{big_layer.replace(':', '/')}: aborted an unfinished multipart upload" in output.getvalue()
    assert bucket_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    stored = bucket_client.get_object(Bucket=bucket, Key=f"acme/app/blobs/{big_layer.replace(':', '/')}")["Body"].read()
    assert stored == layout.blobs[big_layer]
    index = orjson.loads(bucket_client.get_object(Bucket=bucket, Key="acme/app/index.json")["Body"].read())
    assert [(entry["annotations"][REF_NAME], entry["digest"]) for entry in index["manifests"]] == [
        ("new", layout.digest),
        ("stable", earlier.digest),
    ]
