"""`stratus serve` as a process: start-up errors, help text, worker processes and logs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest

from stratus.config import SETTINGS
from support.processes import child_environment
from support.registry import SERVE_COMMAND


def _serve(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE_COMMAND, *arguments], env=child_environment(environment),
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"S3_USE_SSL": "ture"}, "stratus: configuration error: S3_USE_SSL='ture' is invalid: expected true or false\n"),
        ({"PORT": "abc"}, "stratus: configuration error: PORT='abc' is invalid: expected an integer from 1 to 65535\n"),
        ({"S3_ACCESS_KEY_ID": None}, "stratus: configuration error: S3_ACCESS_KEY_ID is not set: "
                                     "expected a non-empty access key id (required with S3_ENDPOINT)\n"),
        ({"S3_SECRET_ACCESS_KEY": None}, "stratus: configuration error: S3_SECRET_ACCESS_KEY is not set: "
                                         "expected a non-empty secret key (required with S3_ENDPOINT)\n"),
        ({"STRATUS_INDEX_FRESHNESS": "-1"}, "stratus: configuration error: STRATUS_INDEX_FRESHNESS='-1' is invalid: "
                                            "expected seconds from 0 to 3600\n"),
    ],
)
def test_serve_rejects_bad_settings(stratus_env: dict[str, str], overrides: dict[str, str | None], message: str) -> None:
    environment = {key: value for key, value in {**stratus_env, **overrides}.items() if value is not None}
    result = _serve(environment)
    assert result.returncode == 2
    assert result.stderr == message
    assert result.stdout == ""


def test_serve_help_lists_every_setting() -> None:
    result = subprocess.run([*SERVE_COMMAND, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for setting in SETTINGS:
        assert setting.variable in result.stdout


def test_serve_with_two_workers(registry_factory: Any) -> None:
    registry = registry_factory(command=(*SERVE_COMMAND, "--workers", "2"))
    children = subprocess.run(
        ["pgrep", "-P", str(registry.pid)], capture_output=True, text=True, timeout=10
    ).stdout.split()
    # uvicorn's supervisor starts one process per worker (and may add a helper of its own).
    assert len(children) >= 2
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        for _ in range(20):
            assert client.get("/v2/").status_code == 200


def test_serve_logs_json_without_secrets(registry: Any, stratus_env: dict[str, str]) -> None:
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        assert client.get("/v2/missing/manifests/latest").status_code == 404
    registry.stop()
    log = registry.stderr_text()
    assert stratus_env["S3_SECRET_ACCESS_KEY"] not in log

    records = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    start = next(record for record in records if record["message"].startswith("Stratus 0.1.0 serving"))
    assert start["level"] == "info"
    assert start["version"] == "0.1.0"
    assert start["settings"]["S3_BUCKET_NAME"] == stratus_env["S3_BUCKET_NAME"]
    assert start["settings"]["S3_ENDPOINT"] == stratus_env["S3_ENDPOINT"]
    assert "S3_SECRET_ACCESS_KEY" not in start["settings"]
    assert f"serving bucket {stratus_env['S3_BUCKET_NAME']} at http://{stratus_env['S3_ENDPOINT']}" in start["message"]

    access = [record for record in records if record["logger"] == "stratus.access"]
    assert [(record["method"], record["path"], record["status"]) for record in access] == [
        ("GET", "/v2/", 200), ("GET", "/v2/missing/manifests/latest", 404),
    ]
    assert all(isinstance(record["duration_ms"], float) for record in access)
    assert any(record["message"] == "Stratus worker stopped." for record in records)


def test_serve_log_level_warning_hides_access_lines(registry_factory: Any) -> None:
    registry = registry_factory({"STRATUS_LOG_LEVEL": "warning"})
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        assert client.get("/v2/").status_code == 200
    registry.stop()
    assert "stratus.access" not in registry.stderr_text()
