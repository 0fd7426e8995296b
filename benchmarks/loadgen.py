"""HTTP load generators for the registry benchmark: wrk, and hey for HEAD requests.

wrk 4.1.0 cannot measure HEAD: it parses every response as if it had a body, so after
a HEAD response with `Content-Length: 182` it waits for 182 bytes that never come and
completes no request. HEAD routes are therefore measured with hey, which handles them,
and every server is measured with the same tool on a given route.

Both run closed loop: each connection sends its next request when the previous response
has arrived, so the latency figures do not include queueing that an open-loop client
would see at the same rate.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A request that takes longer than this counts as a timeout instead of a latency sample.
REQUEST_TIMEOUT_SECONDS = 10
_RESULT_MARKER = "BENCH-RESULT "

# wrk calls `done` once at the end, and it prints the totals as one JSON line. The method
# is set at the top level, so wrk still builds the request once and sends it unchanged.
_WRK_SCRIPT = """\
wrk.method = "{method}"

function done(summary, latency, requests)
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%f,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
end
"""


class LoadGeneratorError(RuntimeError):
    """A load generator failed, timed out, or printed output this module cannot parse."""


@dataclass
class LoadResult:
    """Throughput and latency of one timed run against one URL."""

    tool: str
    requests: int
    duration_seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Responses whose status differs from the route's expected one. wrk cannot compare with
    # one status, so for wrk this counts responses outside 2xx and 3xx.
    unexpected_status: int
    statuses: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tool_for(method: str) -> str:
    """Return the load generator that measures `method`: hey for HEAD, wrk otherwise."""
    return "hey" if method == "HEAD" else "wrk"


def missing_tools(methods: Sequence[str]) -> list[str]:
    return sorted({tool_for(method) for method in methods if shutil.which(tool_for(method)) is None})


def run_load(
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    duration: int,
    connections: int,
    threads: int,
    expected_status: int,
    script_directory: Path,
) -> LoadResult:
    """Send `method url` from `connections` connections for `duration` whole seconds (wrk takes no fractions)."""
    if tool_for(method) == "hey":
        return _run_hey(url, method, headers, duration=duration, connections=connections,
                        expected_status=expected_status)
    return _run_wrk(url, method, headers, duration=duration, connections=connections, threads=threads,
                    script_directory=script_directory)


def _run_wrk(
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    duration: int,
    connections: int,
    threads: int,
    script_directory: Path,
) -> LoadResult:
    script = script_directory / f"wrk-{method.lower()}.lua"
    if not script.exists():
        script.write_text(_WRK_SCRIPT.format(method=method, marker=_RESULT_MARKER))
    command = [
        "wrk", "--threads", str(threads), "--connections", str(connections),
        "--duration", f"{duration}s", "--timeout", f"{REQUEST_TIMEOUT_SECONDS}s", "--script", str(script),
    ]
    for name, value in headers:
        command += ["--header", f"{name}: {value}"]
    command.append(url)
    output = _run(command, timeout=duration + 60)

    line = next((line for line in output.splitlines() if line.startswith(_RESULT_MARKER)), None)
    if line is None:
        raise LoadGeneratorError(f"wrk printed no result line for {url}:\n{output}")
    totals = json.loads(line[len(_RESULT_MARKER):])
    # wrk counts responses outside 2xx and 3xx separately from its socket errors.
    non_2xx_3xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    seconds = totals["duration_us"] / 1e6
    errors = sum(totals[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return LoadResult(
        tool="wrk",
        requests=totals["requests"],
        duration_seconds=seconds,
        requests_per_second=totals["requests"] / seconds if seconds else 0.0,
        p50_ms=totals["p50_us"] / 1000,
        p99_ms=totals["p99_us"] / 1000,
        errors=errors,
        unexpected_status=int(non_2xx_3xx.group(1)) if non_2xx_3xx else 0,
    )


def _run_hey(
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    duration: int,
    connections: int,
    expected_status: int,
) -> LoadResult:
    command = [
        "hey", "-z", f"{duration}s", "-c", str(connections), "-m", method,
        "-t", str(REQUEST_TIMEOUT_SECONDS), "-disable-redirects",
    ]
    for name, value in headers:
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    output = _run(command, timeout=duration + 60)

    total = _search_float(r"Total:\s+([\d.]+) secs", output, url)
    rate = _search_float(r"Requests/sec:\s+([\d.]+)", output, url)
    p50 = _search_float(r"50%+ in ([\d.]+) secs", output, url)
    p99 = _search_float(r"99%+ in ([\d.]+) secs", output, url)
    statuses = {code: int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)}
    error_lines = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", output)
    errors = sum(int(count) for count in re.findall(r"\[(\d+)\]", error_lines.group(1))) if error_lines else 0
    requests = sum(statuses.values())
    return LoadResult(
        tool="hey",
        requests=requests,
        duration_seconds=total,
        requests_per_second=rate,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        errors=errors,
        unexpected_status=requests - statuses.get(str(expected_status), 0),
        statuses=statuses,
    )


def _run(command: list[str], *, timeout: float) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LoadGeneratorError(f"{command[0]} timed out after {timeout:g} s: {' '.join(command)}") from None
    if completed.returncode != 0:
        raise LoadGeneratorError(
            f"{' '.join(command)} failed with exit status {completed.returncode}:\n{completed.stdout}{completed.stderr}"
        )
    return completed.stdout


def _search_float(pattern: str, text: str, url: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise LoadGeneratorError(f"hey output for {url} has no match for {pattern!r}:\n{text}")
    return float(match.group(1))
