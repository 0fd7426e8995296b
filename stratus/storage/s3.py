"""Storage on S3 (or any S3-compatible endpoint) through botocore, signed with SigV4."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn

import botocore.session
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import BotoCoreError, ClientError

from stratus.config import Config
from stratus.storage.base import (
    MultipartUpload,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStream,
    ObjectTooLarge,
    PreconditionFailed,
    StorageThrottled,
    StorageUnavailable,
    StoredObject,
)

logger = logging.getLogger(__name__)

# Error codes S3 and S3-compatible servers use to ask a client to slow down.
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "429"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
# Streamed reads (proxy mode) hand out the body in chunks of this many bytes.
STREAM_CHUNK_SIZE = 256 * 1024

# S3 returns 409 ConditionalRequestConflict when two conditional writes of one key overlap;
# the caller retries it exactly as a lost If-Match.
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def build_client(config: Config, endpoint_url: str | None = None) -> Any:
    """Create a botocore S3 client with explicit timeouts, retries, pool size and SigV4."""
    session = botocore.session.get_session()
    client_config = BotocoreConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path" if config.s3_path_style else "virtual"},
        connect_timeout=config.s3_connect_timeout,
        read_timeout=config.s3_read_timeout,
        retries={"mode": "standard", "total_max_attempts": config.s3_max_attempts},
        max_pool_connections=config.s3_max_connections,
    )
    return session.create_client(
        "s3",
        endpoint_url=endpoint_url or config.s3_endpoint_url,
        region_name=config.s3_region,
        aws_access_key_id=config.s3_access_key_id,
        aws_secret_access_key=config.s3_secret_access_key,
        config=client_config,
    )


class S3Storage:
    """A bucket on an S3 endpoint; see stratus.storage.base.Storage for the contract."""

    can_presign = True

    def __init__(self, config: Config) -> None:
        self.bucket = config.s3_bucket
        self._client = build_client(config)
        # Presigned URLs name the host clients reach, which may differ from the one this
        # process talks to. Signing is local, so this client never sends a request.
        public_url = config.s3_public_endpoint_url
        self._presign_client = build_client(config, public_url) if public_url else self._client
        self._requests_sent = 0
        self._count_lock = threading.Lock()
        self._client.meta.events.register("before-send.s3", self._count_request)

    @property
    def requests_sent(self) -> int:
        """Return how many HTTP requests (retries included) this storage has sent to S3."""
        return self._requests_sent

    def get(self, key: str, *, max_bytes: int, if_none_match: str | None = None) -> StoredObject:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_none_match is not None:
            params["IfNoneMatch"] = if_none_match
        response = self._call("get_object", key, required=("ContentLength", "ETag"), **params)

        body = response["Body"]
        size = response["ContentLength"]
        if size > max_bytes:
            body.close()
            raise ObjectTooLarge(key, size, max_bytes, response.get("ETag"))
        try:
            data = body.read(max_bytes + 1)
        except BotoCoreError as error:
            raise StorageUnavailable(f"reading {key} failed: {error}") from error
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ObjectTooLarge(key, len(data), max_bytes)
        # A connection closed part way through the body ends the read early without an
        # error (botocore checks the length only when a read returns nothing), so the
        # short body would pass for the whole object.
        if len(data) != size:
            raise StorageUnavailable(f"get_object {key} failed: the connection closed after {len(data)} of {size} bytes")
        return StoredObject(data, response["ETag"], response.get("ContentType"))

    def stat(self, key: str) -> ObjectInfo:
        response = self._call("head_object", key, required=("ContentLength", "ETag"), Bucket=self.bucket, Key=key)
        return ObjectInfo(response["ContentLength"], response["ETag"], response.get("ContentType"))

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        byte_range = f"bytes={start}-" if end is None else f"bytes={start}-{end}"
        response = self._call(
            "get_object", key, required=("ContentLength",), Bucket=self.bucket, Key=key, Range=byte_range
        )
        body = response["Body"]
        size = _total_size(response)
        last = start + response["ContentLength"] - 1
        return ObjectStream(size, start, last, _guarded_chunks(body, key), body.close)

    def ping(self) -> None:
        self._call("head_bucket", self.bucket, Bucket=self.bucket)

    def presign_get(self, key: str, expires_in: int) -> str:
        return self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentType": content_type}
        if if_match is not None:
            params["IfMatch"] = if_match
        if if_none_match is not None:
            params["IfNoneMatch"] = if_none_match
        return self._call("put_object", key, required=("ETag",), **params)["ETag"]

    def put_stream(self, key: str, stream: BinaryIO, length: int, *, content_type: str) -> str:
        response = self._call(
            "put_object", key, required=("ETag",),
            Bucket=self.bucket, Key=key, Body=stream, ContentLength=length, ContentType=content_type,
        )
        return response["ETag"]

    def create_multipart_upload(self, key: str, *, content_type: str) -> str:
        response = self._call(
            "create_multipart_upload", key, required=("UploadId",),
            Bucket=self.bucket, Key=key, ContentType=content_type,
        )
        return response["UploadId"]

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        response = self._call(
            "upload_part", key, required=("ETag",),
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number, Body=body,
        )
        return response["ETag"]

    def complete_multipart_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, start=1)]
        self._call(
            "complete_multipart_upload", key,
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
        )

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", key, Bucket=self.bucket, Key=key, UploadId=upload_id)
        except NotFound:
            logger.debug("Multipart upload %s of %s was already gone.", upload_id, key)

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        uploads: list[MultipartUpload] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            response = self._call("list_multipart_uploads", prefix, **params)
            for upload in response.get("Uploads", []):
                initiated = upload["Initiated"].timestamp()
                uploads.append(MultipartUpload(upload["Key"], upload["UploadId"], initiated))
            if not response.get("IsTruncated"):
                return uploads
            params["KeyMarker"] = response["NextKeyMarker"]
            params["UploadIdMarker"] = response["NextUploadIdMarker"]

    def _call(self, operation: str, key: str, *, required: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
        """Make one botocore call, translating its errors, and check that the response has
        the `required` fields.

        http.client takes a connection closed inside the response headers for their end,
        so such a response arrives as a success that lacks some of them.
        """
        try:
            response: dict[str, Any] = getattr(self._client, operation)(**params)
        except ClientError as error:
            _raise_translated(error, operation, key)
        except BotoCoreError as error:
            raise StorageUnavailable(f"{operation} {key} failed: {error}") from error
        missing = [name for name in required if name not in response]
        if missing:
            if "Body" in response:
                response["Body"].close()
            raise StorageUnavailable(f"{operation} {key} failed: the response has no {', '.join(missing)}")
        return response

    def _count_request(self, **_: Any) -> None:
        with self._count_lock:
            self._requests_sent += 1


def _total_size(response: dict[str, Any]) -> int:
    content_range = response.get("ContentRange")
    if content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response["ContentLength"])


def _guarded_chunks(body: Any, key: str) -> Iterator[bytes]:
    """Yield the body's chunks, turning a connection lost mid-body into StorageUnavailable."""
    try:
        yield from body.iter_chunks(STREAM_CHUNK_SIZE)
    except BotoCoreError as error:
        raise StorageUnavailable(f"reading {key} failed: {error}") from error


def _raise_translated(error: ClientError, operation: str, key: str) -> NoReturn:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = f"{operation} {key}: {code or status}"

    if status == 304:
        raise NotModified(message) from error
    if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        raise NotFound(message) from error
    if code in _PRECONDITION_CODES or status == 412:
        raise PreconditionFailed(message) from error
    if code in _THROTTLE_CODES or status == 429:
        raise StorageThrottled(message) from error
    raise StorageUnavailable(message) from error
