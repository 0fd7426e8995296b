"""The `stratus` command: `stratus serve` and `stratus push`.

This is the only module that exits the process. Exit status 2 means a usage or
configuration error, 1 a failure while working.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from stratus import __version__
from stratus.config import SETTINGS, Config, ConfigError, load_config

logger = logging.getLogger("stratus")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    sys.exit(arguments.run(arguments))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stratus",
        description="Serve container images straight from S3, and push OCI layouts to it.",
    )
    parser.add_argument("--version", action="version", version=f"stratus {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the read-only registry",
        description="Run the read-only OCI registry over the bucket named by the environment.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--workers", type=_positive_int, metavar="N",
                       help="uvicorn worker processes (default: STRATUS_WORKERS, 1)")
    serve.set_defaults(run=_serve)

    push = commands.add_parser(
        "push",
        help="push an OCI layout to the bucket",
        description="Upload an OCI image layout (a directory or BuildKit's image.tar) to the bucket.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from stratus.push.command import add_push_arguments

    add_push_arguments(push)
    push.set_defaults(run=_push)
    return parser


def _settings_help() -> str:
    lines = ["settings (environment variables):"]
    for setting in SETTINGS:
        if setting.default is None:
            default = "required"
        elif setting.default == "":
            default = "optional"
        else:
            default = f"default {setting.default}"
        lines.append(f"  {setting.variable:34} {setting.help} ({default}; {setting.expected})")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer")
    return value


def _load_config_or_exit() -> Config:
    try:
        config = load_config(os.environ)
    except ConfigError as error:
        print(f"stratus: configuration error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    if not config.uses_s3:
        from stratus.storage.local import LocalStorage

        try:
            LocalStorage(config.data_dir)
        except OSError as error:
            print(f"stratus: configuration error: STRATUS_DATA_DIR={config.data_dir!r} is unusable: "
                  f"{error.strerror or error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    return config


def _serve(arguments: argparse.Namespace) -> int:
    config = _load_config_or_exit()
    from stratus.registry.server import run_server

    workers = arguments.workers or config.workers
    return run_server(config, workers=workers)


def _push(arguments: argparse.Namespace) -> int:
    config = _load_config_or_exit()
    from stratus.push.command import run_push_command

    return run_push_command(config, arguments)
