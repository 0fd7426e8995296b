"""Settings from the environment: defaults, accepted forms, and the exact start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stratus.config import SETTINGS, ConfigError, load_config
from support.processes import child_environment

SECRET = "s3cr3t-Value-that-must-never-be-shown"

REQUIRED = {
    "S3_ENDPOINT": "minio:9000",
    "S3_ACCESS_KEY_ID": "access-key",
    "S3_SECRET_ACCESS_KEY": SECRET,
}

ENDPOINT_FORM = "host:port, optionally with an http:// or https:// prefix"


def environment(**overrides: str) -> dict[str, str]:
    return {**REQUIRED, **overrides}


def load_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(environ)
    return str(raised.value)


def test_config_defaults() -> None:
    config = load_config(REQUIRED)

    assert config.s3_endpoint == "minio:9000"
    assert config.s3_access_key_id == "access-key"
    assert config.s3_secret_access_key == SECRET
    assert config.s3_bucket == "zeabur-oci-registry"
    assert config.s3_use_ssl is False
    assert config.s3_region == "us-east-1"
    assert config.s3_path_style is False
    assert config.multipart_upload_concurrency == 4
    assert config.port == 3000
    assert config.host == "0.0.0.0"
    assert config.s3_endpoint_url == "http://minio:9000"


def test_config_every_default_parses() -> None:
    config = load_config(REQUIRED)

    for setting in SETTINGS:
        assert hasattr(config, setting.field), setting.variable


def test_config_variables_are_unique() -> None:
    variables = [setting.variable for setting in SETTINGS]
    fields = [setting.field for setting in SETTINGS]

    assert len(variables) == len(set(variables))
    assert len(fields) == len(set(fields))


def test_config_reads_only_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("S3_BUCKET_NAME", "from-os-environ")

    config = load_config(REQUIRED)

    assert config.port == 3000
    assert config.s3_bucket == "zeabur-oci-registry"


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("S3_ACCESS_KEY_ID", "a non-empty access key id"),
        ("S3_SECRET_ACCESS_KEY", "a non-empty secret key"),
    ],
)
def test_config_missing_required_variable(variable: str, expected: str) -> None:
    environ = dict(REQUIRED)
    del environ[variable]

    assert load_error(environ) == f"{variable} is not set: expected {expected} (required with S3_ENDPOINT)"


def test_config_without_endpoint_uses_data_directory() -> None:
    config = load_config({"STRATUS_DATA_DIR": "/srv/images"})

    assert config.uses_s3 is False
    assert config.s3_endpoint is None
    assert config.s3_access_key_id is None
    assert config.data_dir == "/srv/images"
    assert config.storage_location == "directory /srv/images"
    assert load_config({}).data_dir == "./stratus-data"


def test_config_empty_secret_is_hidden() -> None:
    message = load_error(environment(S3_SECRET_ACCESS_KEY=""))

    assert message == "S3_SECRET_ACCESS_KEY=<hidden> is invalid: expected a non-empty secret key"


def test_config_empty_endpoint_is_invalid() -> None:
    assert load_error(environment(S3_ENDPOINT="")) == f"S3_ENDPOINT='' is invalid: expected {ENDPOINT_FORM}"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("S3_USE_SSL", "ture", "S3_USE_SSL='ture' is invalid: expected true or false"),
        ("S3_USE_SSL", "yes", "S3_USE_SSL='yes' is invalid: expected true or false"),
        ("S3_PATH_STYLE", "on", "S3_PATH_STYLE='on' is invalid: expected true or false"),
        ("PORT", "abc", "PORT='abc' is invalid: expected an integer from 1 to 65535"),
        ("PORT", "70000", "PORT='70000' is invalid: expected an integer from 1 to 65535"),
        ("PORT", "0", "PORT='0' is invalid: expected an integer from 1 to 65535"),
        ("PORT", "-1", "PORT='-1' is invalid: expected an integer from 1 to 65535"),
        ("PORT", "3000.0", "PORT='3000.0' is invalid: expected an integer from 1 to 65535"),
        ("S3_ENDPOINT", "minio:99999", f"S3_ENDPOINT='minio:99999' is invalid: expected {ENDPOINT_FORM}"),
        ("S3_ENDPOINT", "minio:0", f"S3_ENDPOINT='minio:0' is invalid: expected {ENDPOINT_FORM}"),
        ("S3_ENDPOINT", "minio/bucket", f"S3_ENDPOINT='minio/bucket' is invalid: expected {ENDPOINT_FORM}"),
        ("S3_ENDPOINT", "http://", f"S3_ENDPOINT='http://' is invalid: expected {ENDPOINT_FORM}"),
        ("S3_ENDPOINT", "ftp://minio:9000", f"S3_ENDPOINT='ftp://minio:9000' is invalid: expected {ENDPOINT_FORM}"),
        ("S3_BUCKET_NAME", "Bad_Bucket",
         "S3_BUCKET_NAME='Bad_Bucket' is invalid: expected an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')"),
        ("S3_BUCKET_NAME", "a..b",
         "S3_BUCKET_NAME='a..b' is invalid: expected an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')"),
        ("S3_MULTIPART_UPLOAD_CONCURRENCY", "0",
         "S3_MULTIPART_UPLOAD_CONCURRENCY='0' is invalid: expected an integer from 1 to 256"),
        ("STRATUS_LOG_LEVEL", "verbose",
         "STRATUS_LOG_LEVEL='verbose' is invalid: expected one of debug, info, warning, error"),
        ("STRATUS_PRESIGN_EXPIRY", "600", "STRATUS_PRESIGN_EXPIRY='600' is invalid: expected seconds from 900 to 604800"),
        ("STRATUS_INDEX_FRESHNESS", "soon", "STRATUS_INDEX_FRESHNESS='soon' is invalid: expected seconds from 0 to 3600"),
    ],
)
def test_config_invalid_value_message(variable: str, value: str, message: str) -> None:
    error = load_error(environment(**{variable: value}))

    assert error == message
    assert SECRET not in error


@pytest.mark.parametrize("value", ["1", "t", "T", "true", "TRUE", "True"])
def test_config_go_true_forms(value: str) -> None:
    config = load_config(environment(S3_USE_SSL=value, S3_PATH_STYLE=value))

    assert config.s3_use_ssl is True
    assert config.s3_path_style is True


@pytest.mark.parametrize("value", ["0", "f", "F", "false", "FALSE", "False"])
def test_config_go_false_forms(value: str) -> None:
    config = load_config(environment(S3_USE_SSL=value, S3_PATH_STYLE=value))

    assert config.s3_use_ssl is False
    assert config.s3_path_style is False


@pytest.mark.parametrize(
    ("endpoint", "use_ssl", "url"),
    [
        ("minio:9000", "false", "http://minio:9000"),
        ("minio:9000", "true", "https://minio:9000"),
        ("http://minio:9000", "true", "http://minio:9000"),
        ("https://s3.example.com", "false", "https://s3.example.com"),
        ("https://s3.example.com/", "false", "https://s3.example.com"),
        ("127.0.0.1:9000", "false", "http://127.0.0.1:9000"),
        ("[::1]:9000", "false", "http://[::1]:9000"),
        ("s3.amazonaws.com", "true", "https://s3.amazonaws.com"),
    ],
)
def test_config_endpoint_url(endpoint: str, use_ssl: str, url: str) -> None:
    config = load_config(environment(S3_ENDPOINT=endpoint, S3_USE_SSL=use_ssl))

    assert config.s3_endpoint_url == url


def test_config_empty_value_takes_default() -> None:
    config = load_config(environment(PORT="", S3_BUCKET_NAME="", S3_USE_SSL=""))

    assert config.port == 3000
    assert config.s3_bucket == "zeabur-oci-registry"
    assert config.s3_use_ssl is False


def test_config_parses_given_values() -> None:
    config = load_config(environment(
        PORT="8080",
        S3_BUCKET_NAME="images.example",
        S3_REGION="eu-west-1",
        S3_MULTIPART_UPLOAD_CONCURRENCY="16",
        STRATUS_LOG_LEVEL="DEBUG",
        STRATUS_INDEX_FRESHNESS="0.5",
    ))

    assert config.port == 8080
    assert config.s3_bucket == "images.example"
    assert config.s3_region == "eu-west-1"
    assert config.multipart_upload_concurrency == 16
    assert config.log_level == "debug"
    assert config.index_freshness == 0.5


def test_config_repr_hides_secret() -> None:
    config = load_config(REQUIRED)

    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert "<hidden>" in repr(config)


def test_config_errors_never_show_secret() -> None:
    messages = []
    for setting in SETTINGS:
        try:
            load_config(environment(**{setting.variable: "not valid!"}))
        except ConfigError as error:
            messages.append(str(error))
    with pytest.raises(ConfigError) as raised:
        load_config(environment(S3_SECRET_ACCESS_KEY=""))
    messages.append(str(raised.value))

    # Free-form settings (key id, region, host) accept any non-empty text.
    assert len(messages) >= len(SETTINGS) - 4
    for message in messages:
        assert SECRET not in message


def test_serve_stops_on_config_error() -> None:
    environ = child_environment({**REQUIRED, "PORT": "abc"})

    completed = subprocess.run(
        [sys.executable, "-m", "stratus", "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert "PORT='abc' is invalid: expected an integer from 1 to 65535" in completed.stderr
    assert SECRET not in completed.stderr
    assert SECRET not in completed.stdout
