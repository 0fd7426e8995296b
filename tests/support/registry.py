"""The real registry (`python -m stratus serve`) in a child process on a loopback port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from support.processes import (
    LOOPBACK,
    child_environment,
    free_port,
    start_process,
    stop_process,
    wait_until_ready,
)

SERVE_COMMAND = (sys.executable, "-m", "stratus", "serve")


class RegistryProcess:
    """One `stratus serve` child, ready once `GET /v2/` returns 200.

    `environment` contains the variables the registry reads (S3_*, STRATUS_*). PORT and
    STRATUS_HOST are chosen here unless `environment` sets them. Settings inherited from
    the test process are dropped, so only what the test passes reaches the server.
    """

    def __init__(
        self,
        environment: Mapping[str, str],
        log_path: Path,
        *,
        command: Sequence[str] = SERVE_COMMAND,
        startup_timeout: float = 20.0,
    ) -> None:
        self.log_path = log_path
        self.command = list(command)
        self.startup_timeout = startup_timeout
        self.environment = {"PORT": str(free_port()), "STRATUS_HOST": LOOPBACK, **environment}
        # A test may pass an invalid PORT on purpose, and start() then reports the exit.
        port = self.environment["PORT"]
        self.port = int(port) if port.isdigit() else 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def host(self) -> str:
        """Return `127.0.0.1:PORT`, the registry part of an image reference."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """Return the process id of the server (uvicorn's supervisor with several workers)."""
        assert self._process is not None, "the registry was not started"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        """Start the server and wait for `GET /v2/` to return 200.

        Raises ProcessStartError with the server's output when it exits or is not ready
        within `startup_timeout` seconds.
        """
        self._process = start_process(
            self.command,
            environment=child_environment(self.environment),
            log_path=self.log_path,
        )
        wait_until_ready(
            self._process,
            self.port,
            "/v2/",
            timeout=self.startup_timeout,
            expected_status=200,
            describe=f"registry with PORT={self.environment['PORT']}",
            log_path=self.log_path,
        )

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit by itself and return its exit status."""
        assert self._process is not None, "the registry was not started"
        return self._process.wait(timeout=timeout)

    def stop(self) -> None:
        """Send SIGTERM, then SIGKILL if the server is still running after 5 seconds."""
        if self._process is not None:
            stop_process(self._process)

    def stderr_text(self) -> str:
        """Return everything the server wrote so far (stdout and stderr share one log)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
