"""The `stratus push LAYOUT NAME[:TAG]` command: arguments, output and exit status.

stratus.cli builds the parser and loads the configuration; this module adds the push
arguments and runs the push. It returns the exit status instead of exiting: 0 on
success, 1 when the push fails, 2 for invalid arguments.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from stratus.config import Config
from stratus.push.errors import PushError, UsageError
from stratus.push.names import parse_target
from stratus.push.parts import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MAX_PART_SIZE, MIN_PART_SIZE
from stratus.push.push import DEFAULT_STALE_UPLOAD_AGE, push_oci_layout
from stratus.storage import StorageError, open_storage

__all__ = ["add_push_arguments", "run_push_command"]

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The shell's status for a process stopped by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"(\d+)\s*([KMG]i?B?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the positional LAYOUT and NAME[:TAG] and the push options to `parser`."""
    parser.add_argument("layout", metavar="LAYOUT",
                        help="OCI image layout: a directory, or an uncompressed tarball such as BuildKit's image.tar")
    parser.add_argument("target", metavar="NAME[:TAG]",
                        help="repository and tag to push to; the tag defaults to latest")
    parser.add_argument("--from", dest="layout_reference", metavar="REF",
                        help="image to push when the layout contains several: a tag, a reference such as "
                             "docker.io/library/app:1.0, or a digest")
    parser.add_argument("-j", "--concurrency", type=_positive_int, metavar="N",
                        help="worker processes that upload blob parts, and blobs uploaded at once "
                             "(default: S3_MULTIPART_UPLOAD_CONCURRENCY)")
    parser.add_argument("--part-size", type=_size, default=DEFAULT_PART_SIZE, metavar="SIZE",
                        help="size of multipart upload parts, such as 8MiB; raised to 5 MiB at least and as far as "
                             f"needed to stay within 10,000 parts (default: {DEFAULT_PART_SIZE // 1024**2}MiB)")
    parser.add_argument("--multipart-threshold", type=_size, default=DEFAULT_MULTIPART_THRESHOLD, metavar="SIZE",
                        help="blobs larger than this go up as multipart uploads, smaller ones in one PUT "
                             f"(default: {DEFAULT_MULTIPART_THRESHOLD // 1024**2}MiB)")
    parser.add_argument("--abort-uploads-older-than", type=_seconds, default=DEFAULT_STALE_UPLOAD_AGE,
                        metavar="SECONDS", dest="stale_upload_age",
                        help="abort unfinished multipart uploads in the repository started longer ago than this, "
                             "such as those of a killed push; 0 aborts all, including those of pushes still "
                             f"running (default: {DEFAULT_STALE_UPLOAD_AGE:.0f})")


def run_push_command(config: Config, arguments: argparse.Namespace) -> int:
    """Push as the parsed arguments ask and return the exit status; errors are printed as one line."""
    _configure_logging(config)
    try:
        repository, tag = parse_target(arguments.target)
    except UsageError as error:
        return _fail(error, EXIT_USAGE)

    concurrency = arguments.concurrency or config.multipart_upload_concurrency
    try:
        storage = open_storage(config)
        result = push_oci_layout(
            storage,
            # A storage other than S3 (a local directory) names its own location.
            getattr(storage, "bucket", config.s3_bucket),
            arguments.layout,
            repository,
            tag,
            log_output=sys.stderr,
            blob_upload_concurrency=concurrency,
            config=config,
            layout_reference=arguments.layout_reference,
            multipart_threshold=arguments.multipart_threshold,
            part_size=arguments.part_size,
            min_part_size=MIN_PART_SIZE,
            stale_upload_age=arguments.stale_upload_age,
        )
    except UsageError as error:
        return _fail(error, EXIT_USAGE)
    except (PushError, StorageError) as error:
        return _fail(error, EXIT_FAILURE)
    except KeyboardInterrupt:
        print("stratus push: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

    print(result.digest)
    return EXIT_SUCCESS


def _fail(error: Exception, status: int) -> int:
    print(f"stratus push: {error}", file=sys.stderr)
    return status


def _configure_logging(config: Config) -> None:
    # Progress lines already tell the user what happens; log records add warnings and
    # errors, and everything when STRATUS_LOG_LEVEL is debug.
    level = logging.DEBUG if config.log_level == "debug" else logging.WARNING
    root = logging.getLogger("stratus")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("stratus push: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds, 0 or more")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer")
    return value


def _size(text: str) -> int:
    """Parse a byte size: digits with an optional binary unit (B, K/KiB, M/MiB, G/GiB)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected bytes, optionally with KiB, MiB or GiB")
    unit = (match.group(2) or "").upper().removesuffix("B").removesuffix("I")
    value = int(match.group(1)) * _SIZE_UNITS[unit or "B"]
    if value > MAX_PART_SIZE:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected at most 5GiB")
    return value
