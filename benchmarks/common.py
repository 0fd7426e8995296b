"""Helpers shared by the benchmarks: paths, machine facts, statistics and JSON output.

The benchmarks start their children (moto, the registry, uvicorn) through the test
suite's helpers in tests/support, so this module puts `tests/` on `sys.path`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIRECTORY = REPOSITORY_ROOT / "benchmarks"
OUTPUT_DIRECTORY = BENCHMARKS_DIRECTORY / "out"

if str(REPOSITORY_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT / "tests"))

MIB = 1024 * 1024
GIB = 1024 * MIB

_PACKAGES = ("stratus", "uvicorn", "uvloop", "httptools", "orjson", "botocore", "boto3", "s3transfer", "moto",
             "psutil", "py-spy")


def use_fake_aws_credentials() -> None:
    """Point botocore in this process and its children at moto's fake credentials and no user files.

    AWS_CA_BUNDLE is kept, because it applies only to https and every endpoint here is plain http.
    """
    from support.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION

    os.environ["AWS_ACCESS_KEY_ID"] = FAKE_ACCESS_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_SECRET_ACCESS_KEY
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                     "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(variable, None)


def timestamp() -> str:
    """Return the current UTC time as 20250601T120000Z, for file names."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def tool_version(command: Sequence[str]) -> str | None:
    """Return the first line a version command prints, or None when the tool is missing."""
    if shutil.which(command[0]) is None:
        return None
    try:
        completed = subprocess.run(list(command), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine_info() -> dict[str, Any]:
    """Collect the hardware, kernel, interpreter, package and tool versions a result depends on."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_total_bytes": _memory_total(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "tools": {
            "wrk": tool_version(["wrk", "-v"]),
            "hey": "installed" if shutil.which("hey") else None,
            "docker-registry": tool_version(["docker-registry", "--version"]),
            "skopeo": tool_version(["skopeo", "--version"]),
        },
        "load_average_at_start": list(os.getloadavg()),
        "git": _git_state(),
        "stratus_path": _stratus_path(),
    }


def format_machine(info: dict[str, Any]) -> str:
    """Format machine_info() as a few lines for the terminal and for RESULTS.md."""
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items() if version)
    tools = ", ".join(f"{version}" for version in info["tools"].values() if version and version != "installed")
    git = info["git"]
    return "\n".join([
        f"CPU: {info['cpu_model']}, {info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable); "
        f"memory {info['memory_total_bytes'] / GIB:.1f} GiB; Linux {info['kernel']}",
        f"Python {info['python']}; {packages}",
        f"Tools: {tools}" + ("; hey installed" if info["tools"].get("hey") else ""),
        f"Load average at start: {' '.join(f'{value:.2f}' for value in info['load_average_at_start'])}",
        f"Repository: commit {git['commit']}" + (" with uncommitted changes under stratus/" if git["dirty"] else "")
        + f"; stratus imported from {info['stratus_path']}",
    ])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(name: str, document: dict[str, Any]) -> Path:
    """Write `document` to benchmarks/out/<name>-<time>.json and return the path."""
    OUTPUT_DIRECTORY.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIRECTORY / f"{name}-{timestamp()}.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _stratus_path() -> str | None:
    """Return the directory stratus is imported from, which may be an install of another commit."""
    try:
        import stratus
    except ImportError:
        return None
    return str(Path(stratus.__file__).resolve().parent)


def _git_state() -> dict[str, Any]:
    def git(*arguments: str) -> str:
        completed = subprocess.run(["git", "-C", str(REPOSITORY_ROOT), *arguments],
                                   capture_output=True, text=True, timeout=10, check=False)
        return completed.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "stratus")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit or "unknown", "dirty": bool(changed)}
