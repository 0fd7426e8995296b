"""Child processes for the tests: free loopback ports, readiness polling and bounded stops.

Every wait here has a time limit, so a hung child fails a test instead of hanging the run.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

_PR_SET_PDEATHSIG = 1

# Inherited settings that would leak into a child: the registry's own configuration, and
# AWS settings that would point botocore at another profile or endpoint.
_CONFIG_PREFIXES = ("S3_", "STRATUS_", "AWS_PROFILE", "AWS_ENDPOINT_URL")
_CONFIG_NAMES = frozenset({"PORT"})


class ProcessStartError(RuntimeError):
    """A child process exited or did not become ready within its time limit."""


def free_port() -> int:
    """Return a TCP port on the loopback address that was free a moment ago.

    NOTE: another process may take the port before the child binds it. The start-up
    wait then reports the child's bind error from its log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def child_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment for a child, without inherited Stratus settings.

    Loopback addresses are added to NO_PROXY so that a proxy configured on the machine
    never receives the tests' traffic.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_CONFIG_PREFIXES) and name not in _CONFIG_NAMES
    }
    for variable in ("NO_PROXY", "no_proxy"):
        existing = environment.get(variable, "")
        hosts = [host for host in existing.split(",") if host]
        environment[variable] = ",".join([*hosts, LOOPBACK, "localhost"])
    if overrides:
        environment.update(overrides)
    return environment


def http_status(port: int, path: str, *, timeout: float = 1.0) -> int | None:
    """Send `GET path` to the loopback port and return the status, or None without a response.

    http.client is used instead of urllib so that no proxy setting applies.
    """
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_until_ready(
    process: subprocess.Popen[bytes],
    port: int,
    path: str,
    *,
    timeout: float,
    expected_status: int | None = None,
    describe: str,
    log_path: Path | None = None,
) -> None:
    """Poll `GET path` until it returns `expected_status` (any status when None).

    Raises ProcessStartError, with the tail of the child's log, when the child exits
    first or the time limit passes.
    """
    deadline = time.monotonic() + timeout
    last_status: int | None = None
    while time.monotonic() < deadline:
        exit_status = process.poll()
        if exit_status is not None:
            raise ProcessStartError(
                f"{describe} exited with status {exit_status} before it was ready"
                + _log_tail(log_path)
            )
        last_status = http_status(port, path)
        if last_status is not None and (expected_status is None or last_status == expected_status):
            return
        time.sleep(0.05)

    stop_process(process)
    expected = "a response" if expected_status is None else f"status {expected_status}"
    raise ProcessStartError(
        f"{describe} did not return {expected} to GET {path} within {timeout:g} s "
        f"(last status: {last_status})" + _log_tail(log_path)
    )


def start_process(
    command: Sequence[str], *, environment: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group, with stdout and stderr appended to `log_path`.

    A file instead of a pipe means a chatty child can never block on a full pipe buffer.
    On Linux the child also gets SIGTERM when the test process dies, so a killed pytest
    run leaves no moto or registry behind.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
        )


def _terminate_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGTERM), see prctl(2). It fires when the thread that
    # started the child exits, and fixtures start children from pytest's main thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    """Stop a child and its process group (uvicorn workers, for example) with SIGTERM, then
    SIGKILL after `timeout` seconds, and reap it."""
    if process.poll() is not None:
        return
    try:
        # A child paused with SIGSTOP would hold SIGTERM pending until it is continued.
        _signal_group(process, signal.SIGCONT)
        _signal_group(process, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=timeout)


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    # start_process() made the child a session leader, so its group id is its pid.
    try:
        os.killpg(process.pid, signal_number)
    except ProcessLookupError:
        pass


def _log_tail(log_path: Path | None, limit: int = 4000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace")
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return f"\n--- output of the process ---\n{text}"


class ToolError(RuntimeError):
    """A command-line tool failed or ran past its time limit; the message has its output."""


def run_tool(
    command: Sequence[str],
    *,
    timeout: float,
    environment: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool to completion within `timeout` seconds, raising ToolError on failure."""
    try:
        completed = subprocess.run(
            list(command),
            env=dict(environment) if environment is not None else child_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ToolError(
            f"{' '.join(command)} timed out after {timeout:g} s\n{_decode(error.stderr)}"
        ) from None
    if completed.returncode != 0:
        raise ToolError(
            f"{' '.join(command)} failed with exit status {completed.returncode}\n"
            f"--- stdout ---\n{_decode(completed.stdout)}\n--- stderr ---\n{_decode(completed.stderr)}"
        )
    return completed


def _decode(output: bytes | str | None) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output
