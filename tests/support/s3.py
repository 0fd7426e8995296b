"""A moto S3 server in a child process, and buckets on it.

moto keeps everything in memory: stopping the server loses every bucket, so a restarted
server starts empty.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config as BotocoreConfig

from support.processes import (
    LOOPBACK,
    child_environment,
    free_port,
    start_process,
    stop_process,
    wait_until_ready,
)

# moto accepts any credentials, so these only have to be well formed.
FAKE_ACCESS_KEY_ID = "stratus-test-access-key"
FAKE_SECRET_ACCESS_KEY = "stratus-test-secret-key"
REGION = "us-east-1"

_LAUNCHER = Path(__file__).with_name("moto_launcher.py")


class MotoServer:
    """moto's standalone S3 server on a loopback port that stays the same across restarts.

    With `serialize_writes`, the server is started through moto_launcher.py, which makes
    conditional PutObject atomic (see that module for the cost).
    """

    def __init__(self, log_path: Path, *, serialize_writes: bool = False, startup_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.serialize_writes = serialize_writes
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Return the `host:port` form that S3_ENDPOINT takes."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it responds to HTTP requests."""
        if self.is_running:
            return
        if self.serialize_writes:
            command = [sys.executable, str(_LAUNCHER)]
        else:
            command = [sys.executable, "-m", "moto.server"]
        command += ["-H", LOOPBACK, "-p", str(self.port)]
        environment = child_environment({"MOTO_PORT": str(self.port)})

        self._process = start_process(command, environment=environment, log_path=self.log_path)
        wait_until_ready(
            self._process,
            self.port,
            "/",
            timeout=self.startup_timeout,
            describe=f"moto S3 server on port {self.port}",
            log_path=self.log_path,
        )

    def stop(self) -> None:
        """Stop the server. S3 requests then fail with connection refused."""
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def restart(self) -> None:
        """Stop and start the server on the same port. Its buckets are gone afterwards."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP. The kernel still accepts connections but nothing
        responds, so S3 requests time out instead of failing at once."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a server frozen by pause()."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def new_bucket_name() -> str:
    """Return a bucket name that no other test uses."""
    return f"stratus-test-{uuid.uuid4().hex[:20]}"


def s3_client(endpoint: str) -> Any:
    """Return a botocore S3 client for the endpoint, path style, with the fake credentials."""
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        region_name=REGION,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        config=BotocoreConfig(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def create_bucket(endpoint: str, name: str) -> None:
    s3_client(endpoint).create_bucket(Bucket=name)


def s3_environment(endpoint: str, bucket: str) -> dict[str, str]:
    """Return the S3_* variables that point Stratus at `bucket` on `endpoint`."""
    return {
        "S3_ENDPOINT": endpoint,
        "S3_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "S3_BUCKET_NAME": bucket,
        "S3_REGION": REGION,
        "S3_PATH_STYLE": "true",
    }
