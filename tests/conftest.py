"""Fixtures shared by the test suite: moto S3 servers, per-test buckets, and the registry.

    s3_endpoint          session moto server (plain `python -m moto.server`), "127.0.0.1:PORT"
    atomic_s3_endpoint   session moto server that applies writes one at a time, so that
                         conditional writes are atomic (support/moto_launcher.py explains
                         why). Tests marked `atomic_s3` get their bucket there.
    bucket               a fresh, empty bucket for this test
    stratus_env          the S3_* variables for that bucket (path style)
    storage              S3Storage for that bucket, built through load_config()
    bucket_client        a botocore S3 client for the bucket's endpoint
    registry_factory     starts `python -m stratus serve` children; stopped after the test
    registry             one registry over `bucket`
    isolated_s3_server   a moto server of this test's own, to stop, pause or restart
    make_layout          generates an OCI layout (support/layouts.py) under tmp_path
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from stratus.config import load_config
from stratus.storage import Storage, open_storage
from support.layouts import TARBALL, LayoutDescription, LayoutSpec, generate_layout
from support.registry import SERVE_COMMAND, RegistryProcess
from support.s3 import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    REGION,
    MotoServer,
    create_bucket,
    new_bucket_name,
    s3_client,
    s3_environment,
)

RegistryFactory = Callable[..., RegistryProcess]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "atomic_s3: put this test's bucket on the moto server that applies writes one at a time, "
        "so conditional PutObject is atomic as on S3",
    )


@pytest.fixture(scope="session", autouse=True)
def fake_aws_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every botocore client in this process at fake credentials and no user config."""
    missing = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_CONFIG_FILE", str(missing))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                         "AWS_ENDPOINT_URL_S3"):
            patch.delenv(variable, raising=False)
        yield


def _session_moto(tmp_path_factory: pytest.TempPathFactory, *, serialize_writes: bool) -> Iterator[MotoServer]:
    log_directory = tmp_path_factory.mktemp("moto")
    server = MotoServer(log_directory / "moto.log", serialize_writes=serialize_writes)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory, fake_aws_credentials: None) -> Iterator[MotoServer]:
    yield from _session_moto(tmp_path_factory, serialize_writes=False)


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: MotoServer) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="session")
def atomic_s3_server(tmp_path_factory: pytest.TempPathFactory, fake_aws_credentials: None) -> Iterator[MotoServer]:
    yield from _session_moto(tmp_path_factory, serialize_writes=True)


@pytest.fixture(scope="session")
def atomic_s3_endpoint(atomic_s3_server: MotoServer) -> str:
    return atomic_s3_server.endpoint


@pytest.fixture
def bucket_endpoint(request: pytest.FixtureRequest) -> str:
    """Return the endpoint of this test's bucket: the atomic server for tests marked
    `atomic_s3`, else the plain one."""
    if request.node.get_closest_marker("atomic_s3") is not None:
        return str(request.getfixturevalue("atomic_s3_endpoint"))
    return str(request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def bucket(bucket_endpoint: str) -> str:
    name = new_bucket_name()
    create_bucket(bucket_endpoint, name)
    return name


@pytest.fixture
def stratus_env(bucket_endpoint: str, bucket: str) -> dict[str, str]:
    return s3_environment(bucket_endpoint, bucket)


@pytest.fixture
def storage(stratus_env: dict[str, str]) -> Storage:
    return open_storage(load_config(stratus_env))


@pytest.fixture
def bucket_client(bucket_endpoint: str) -> Any:
    return s3_client(bucket_endpoint)


@pytest.fixture
def registry_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """Return `start(extra_env=None, *, env=None, command=..., startup_timeout=20.0)`.

    The registry reads `env` (default: this test's `stratus_env`) updated with `extra_env`.
    Every registry started here is stopped after the test.
    """
    started: list[RegistryProcess] = []
    log_directory = tmp_path_factory.mktemp("registry")

    def start(
        extra_env: Mapping[str, str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVE_COMMAND,
        startup_timeout: float = 20.0,
    ) -> RegistryProcess:
        base = dict(env) if env is not None else dict(request.getfixturevalue("stratus_env"))
        base.update(extra_env or {})
        log_path = log_directory / f"registry-{len(started)}.log"
        registry = RegistryProcess(base, log_path, command=command, startup_timeout=startup_timeout)
        started.append(registry)
        registry.start()
        return registry

    yield start
    for registry in started:
        registry.stop()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> RegistryProcess:
    return registry_factory()


@pytest.fixture
def isolated_s3_server(tmp_path: Path, fake_aws_credentials: None) -> Iterator[MotoServer]:
    """A moto server for this test alone, so it can be stopped, paused or restarted.

    Build the registry's settings with support.s3.s3_environment(server.endpoint, name)
    after support.s3.create_bucket(server.endpoint, name).
    """
    server = MotoServer(tmp_path / "isolated-moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_layout(tmp_path: Path) -> Callable[..., LayoutDescription]:
    """Return `make(spec=None, **fields)`, which writes a new layout under tmp_path.

    `fields` build a LayoutSpec when `spec` is not given, for example
    `make_layout(platforms=(AMD64, ARM64), attestations=ARTIFACT)`.
    """
    count = 0

    def make(spec: LayoutSpec | None = None, **fields: Any) -> LayoutDescription:
        nonlocal count
        count += 1
        spec = spec or LayoutSpec(**fields)
        suffix = ".tar" if spec.output == TARBALL else ""
        return generate_layout(tmp_path / f"layout-{count}{suffix}", spec)

    return make
