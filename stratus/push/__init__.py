"""The pusher: uploads an OCI image layout (a directory or BuildKit's image.tar) to a repository in the bucket.

    from stratus.config import load_config
    from stratus.push import push_oci_layout
    from stratus.storage import open_storage

    config = load_config(os.environ)
    result = push_oci_layout(open_storage(config), config.s3_bucket, "image.tar", "app", "1.0", config=config)

This package imports only stratus.oci, stratus.storage and stratus.config.
"""

from stratus.push.errors import (
    BlobMissing,
    DigestMismatch,
    ImageNotChosen,
    IndexUpdateFailed,
    InvalidImageReference,
    LayoutError,
    PushError,
    UploadFailed,
    UsageError,
)
from stratus.push.push import PushResult, push_oci_layout

__all__ = [
    "BlobMissing",
    "DigestMismatch",
    "ImageNotChosen",
    "IndexUpdateFailed",
    "InvalidImageReference",
    "LayoutError",
    "PushError",
    "PushResult",
    "UploadFailed",
    "UsageError",
    "push_oci_layout",
]
