"""Settings read from the environment once, validated, and held in a frozen Config.

The `S3_*` variables and `PORT` are shared with the earlier Go release of Stratus, so they
keep its names, defaults and boolean forms. Settings of this implementation's own use the
`STRATUS_` prefix. Every setting is listed in SETTINGS, which `stratus serve --help` prints.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Config", "ConfigError", "SETTINGS", "Setting", "load_config"]


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the variable and the expected form."""


# The default of a setting that may stay unset; its field is then None.
UNSET = ""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default (None when required, UNSET when
    optional) and meaning."""

    variable: str
    field: str
    default: str | None
    expected: str
    help: str
    parse: Callable[[str], Any]


# Go's strconv.ParseBool forms, which the Go release accepted.
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}

_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))(?::(\d{1,5}))?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _boolean(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _integer(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip(), 10)
        if not minimum <= value <= maximum:
            raise ValueError
        return value

    return parse


def _seconds(minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not minimum <= value <= maximum:
            raise ValueError
        return value

    return parse


def _endpoint(text: str) -> str:
    address = text.strip()
    for scheme in ("http://", "https://"):
        if address.lower().startswith(scheme):
            address = address[len(scheme):]
    address = address.rstrip("/")
    match = _HOST_PORT.fullmatch(address)
    if match is None:
        raise ValueError
    port = match.group(1)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError
    return text.strip().rstrip("/")


def _bucket(text: str) -> str:
    if _BUCKET.fullmatch(text) is None or ".." in text:
        raise ValueError
    return text


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError
    return text


def _log_level(text: str) -> str:
    if text.lower() not in _LOG_LEVELS:
        raise ValueError
    return text.lower()


_MIB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    Setting("S3_ENDPOINT", "s3_endpoint", UNSET, "host:port, optionally with an http:// or https:// prefix",
            "S3 endpoint to read and write the bucket; unset, a local directory (STRATUS_DATA_DIR) is used", _endpoint),
    Setting("S3_ACCESS_KEY_ID", "s3_access_key_id", UNSET, "a non-empty access key id",
            "S3 access key id (required with S3_ENDPOINT)", _non_empty),
    Setting("S3_SECRET_ACCESS_KEY", "s3_secret_access_key", UNSET, "a non-empty secret key",
            "S3 secret access key (required with S3_ENDPOINT; never logged)", _non_empty),
    Setting("S3_PUBLIC_ENDPOINT", "s3_public_endpoint", UNSET, "host:port, optionally with an http:// or https:// prefix",
            "S3 endpoint that clients reach, used in redirect URLs when it differs from S3_ENDPOINT", _endpoint),
    Setting("S3_BUCKET_NAME", "s3_bucket", "zeabur-oci-registry", "an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')",
            "bucket that holds the repositories", _bucket),
    Setting("S3_USE_SSL", "s3_use_ssl", "false", "true or false",
            "use https for S3 when S3_ENDPOINT has no scheme", _boolean),
    Setting("S3_REGION", "s3_region", "us-east-1", "a region name such as us-east-1",
            "region used to sign S3 requests", _non_empty),
    Setting("S3_PATH_STYLE", "s3_path_style", "false", "true or false",
            "path-style addressing (endpoint/bucket/key) instead of virtual-hosted (bucket.endpoint/key)", _boolean),
    Setting("S3_MULTIPART_UPLOAD_CONCURRENCY", "multipart_upload_concurrency", "4", "an integer from 1 to 256",
            "worker processes that upload parts of one push", _integer(1, 256)),
    Setting("PORT", "port", "3000", "an integer from 1 to 65535",
            "TCP port the registry listens on", _integer(1, 65535)),
    Setting("STRATUS_DATA_DIR", "data_dir", "./stratus-data", "a directory path",
            "directory that holds the repositories when S3_ENDPOINT is unset", _non_empty),
    Setting("STRATUS_BLOB_PROXY", "blob_proxy", "false", "true or false",
            "send blob bytes through the registry instead of redirecting to S3 (for buckets clients cannot reach)",
            _boolean),
    Setting("STRATUS_HOST", "host", "0.0.0.0", "an IP address or host name",
            "address the registry listens on", _non_empty),
    Setting("STRATUS_WORKERS", "workers", "1", "an integer from 1 to 256",
            "uvicorn worker processes (also --workers)", _integer(1, 256)),
    Setting("STRATUS_SHUTDOWN_TIMEOUT", "shutdown_timeout", "30", "seconds from 0 to 3600",
            "how long SIGTERM waits for requests in flight before closing them", _seconds(0, 3600)),
    Setting("STRATUS_LOG_LEVEL", "log_level", "info", "one of " + ", ".join(_LOG_LEVELS),
            "lowest level of log lines written", _log_level),
    Setting("STRATUS_ACCESS_LOG", "access_log", "true", "true or false",
            "write one log line per request", _boolean),
    Setting("STRATUS_INDEX_FRESHNESS", "index_freshness", "1", "seconds from 0 to 3600",
            "how long a cached index.json is used before it is revalidated with S3", _seconds(0, 3600)),
    Setting("STRATUS_INDEX_CACHE_ENTRIES", "index_cache_entries", "1024", "an integer from 1 to 1000000",
            "repositories whose parsed index.json is cached", _integer(1, 1_000_000)),
    Setting("STRATUS_MANIFEST_CACHE_BYTES", "manifest_cache_bytes", str(64 * _MIB), "bytes from 0 to 68719476736",
            "memory for cached manifest bytes", _integer(0, 64 * 1024 * _MIB)),
    Setting("STRATUS_BLOB_CACHE_ENTRIES", "blob_cache_entries", "65536", "an integer from 0 to 10000000",
            "blobs whose size and presigned URL are cached", _integer(0, 10_000_000)),
    Setting("STRATUS_PRESIGN_EXPIRY", "presign_expiry", "3600", "seconds from 900 to 604800",
            "validity of presigned blob URLs; a URL is reused while 10 minutes of it remain", _seconds(900, 604800)),
    Setting("STRATUS_MAX_INDEX_BYTES", "max_index_bytes", str(16 * _MIB), "bytes from 1024 to 1073741824",
            "largest index.json the registry reads", _integer(1024, 1024 * _MIB)),
    Setting("STRATUS_S3_CONNECT_TIMEOUT", "s3_connect_timeout", "2", "seconds from 0.1 to 300",
            "timeout for opening a connection to S3", _seconds(0.1, 300)),
    Setting("STRATUS_S3_READ_TIMEOUT", "s3_read_timeout", "10", "seconds from 0.1 to 3600",
            "timeout for reading an S3 response", _seconds(0.1, 3600)),
    Setting("STRATUS_S3_MAX_ATTEMPTS", "s3_max_attempts", "3", "an integer from 1 to 20",
            "attempts per S3 request, first one included (botocore standard retry mode)", _integer(1, 20)),
    Setting("STRATUS_S3_MAX_CONNECTIONS", "s3_max_connections", "32", "an integer from 1 to 1024",
            "connections kept open to S3, and threads that make S3 calls", _integer(1, 1024)),
)


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings. Build it with load_config(); the field names follow SETTINGS."""

    s3_endpoint: str | None
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    s3_public_endpoint: str | None
    s3_bucket: str
    s3_use_ssl: bool
    s3_region: str
    s3_path_style: bool
    multipart_upload_concurrency: int
    port: int
    data_dir: str
    blob_proxy: bool
    host: str
    workers: int
    shutdown_timeout: float
    log_level: str
    access_log: bool
    index_freshness: float
    index_cache_entries: int
    manifest_cache_bytes: int
    blob_cache_entries: int
    presign_expiry: float
    max_index_bytes: int
    s3_connect_timeout: float
    s3_read_timeout: float
    s3_max_attempts: int
    s3_max_connections: int

    @property
    def uses_s3(self) -> bool:
        """Return True when the bucket is on S3, False for the local data directory."""
        return self.s3_endpoint is not None

    @property
    def s3_endpoint_url(self) -> str:
        """Return the endpoint as a URL; an explicit scheme in S3_ENDPOINT wins over S3_USE_SSL."""
        assert self.s3_endpoint is not None, "no S3 endpoint is configured"
        return self._url(self.s3_endpoint)

    @property
    def s3_public_endpoint_url(self) -> str | None:
        return None if self.s3_public_endpoint is None else self._url(self.s3_public_endpoint)

    @property
    def storage_location(self) -> str:
        """Return where the repositories live, for log lines: the endpoint and bucket, or the directory."""
        if self.uses_s3:
            return f"bucket {self.s3_bucket} at {self.s3_endpoint_url}"
        return f"directory {self.data_dir}"

    def public_settings(self) -> dict[str, Any]:
        """Return every setting in effect by variable name, with the secret key left out."""
        return {
            setting.variable: getattr(self, setting.field)
            for setting in SETTINGS
            if setting.variable != "S3_SECRET_ACCESS_KEY"
        }

    def _url(self, endpoint: str) -> str:
        if "://" in endpoint:
            return endpoint
        scheme = "https" if self.s3_use_ssl else "http"
        return f"{scheme}://{endpoint}"

    def __repr__(self) -> str:
        return f"Config({self.storage_location}, secret=<hidden>)"


def load_config(environ: Mapping[str, str]) -> Config:
    """Read every setting from `environ`, raising ConfigError on the first bad one."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = environ.get(setting.variable)
        if text is None and setting.default == UNSET:
            values[setting.field] = None
            continue
        # An empty value means the default, except for optional settings, where it is
        # more likely a mistake than a wish to leave them unset.
        if text is None or (text == "" and setting.default not in (None, UNSET)):
            if setting.default is None:
                raise ConfigError(f"{setting.variable} is not set: expected {setting.expected}")
            text = setting.default
        values[setting.field] = _parse(setting, text)

    _check_unknown_variables(environ)
    if values["s3_endpoint"] is not None:
        for setting in SETTINGS:
            if setting.variable in _REQUIRED_WITH_ENDPOINT and values[setting.field] is None:
                raise ConfigError(
                    f"{setting.variable} is not set: expected {setting.expected} (required with S3_ENDPOINT)"
                )
    else:
        # Credentials without an endpoint mean S3 was intended; serving a local directory
        # instead would hide the mistake.
        for variable in _REQUIRED_WITH_ENDPOINT:
            if environ.get(variable):
                raise ConfigError(
                    f"{variable} is set but S3_ENDPOINT is not: set S3_ENDPOINT to use S3, "
                    "or unset the S3_* variables to use the directory STRATUS_DATA_DIR"
                )
    return Config(**values)


_REQUIRED_WITH_ENDPOINT = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
_KNOWN_VARIABLES = frozenset(setting.variable for setting in SETTINGS)


def _check_unknown_variables(environ: Mapping[str, str]) -> None:
    """Reject S3_* and STRATUS_* variables that are no setting, such as a misspelt S3_ENDPOINT."""
    for variable in sorted(environ):
        if variable.startswith(("S3_", "STRATUS_")) and variable not in _KNOWN_VARIABLES:
            close = difflib.get_close_matches(variable, _KNOWN_VARIABLES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{variable} is not a Stratus setting{hint}: see stratus serve --help for the list")


def _parse(setting: Setting, text: str) -> Any:
    try:
        return setting.parse(text)
    except ValueError:
        shown = "<hidden>" if "SECRET" in setting.variable else repr(text)
        raise ConfigError(
            f"{setting.variable}={shown} is invalid: expected {setting.expected}"
        ) from None
