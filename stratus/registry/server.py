"""Running the registry under uvicorn, with one or more worker processes."""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

import uvicorn

from stratus import __version__, storage
from stratus.config import Config, load_config
from stratus.registry.app import RegistryApp
from stratus.registry.logs import logging_config

logger = logging.getLogger("stratus")


def create_app() -> RegistryApp:
    """Build the application from the environment; uvicorn calls this in each worker process."""
    config = load_config(os.environ)
    return RegistryApp(config, storage.open_storage(config))


def _http_protocol() -> Any:
    """Return the guarded httptools protocol, or uvicorn's choice when httptools is missing.

    Without httptools uvicorn uses h11, which limits the request head by itself.
    """
    try:
        from stratus.registry.protocol import GuardedHttpToolsProtocol
    except ImportError:
        return "auto"
    return GuardedHttpToolsProtocol


def run_server(config: Config, *, workers: int) -> int:
    """Serve until stopped; return the exit status."""
    log_config = logging_config(config.log_level)
    logging.config.dictConfig(log_config)
    logger.info(
        "Stratus %s serving %s on %s:%d with %d worker(s); index freshness %gs, "
        "manifest cache %d bytes, blob cache %d entries, presign expiry %ds.",
        __version__, config.storage_location, config.host, config.port, workers,
        config.index_freshness, config.manifest_cache_bytes, config.blob_cache_entries, config.presign_expiry,
        extra={"version": __version__, "settings": config.public_settings()},
    )
    uvicorn.run(
        "stratus.registry.server:create_app",
        factory=True,
        host=config.host,
        port=config.port,
        workers=workers,
        log_config=log_config,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=config.shutdown_timeout,
        http=_http_protocol(),
        # Stratus reads no client address, so uvicorn's X-Forwarded-For handling is skipped.
        proxy_headers=False,
    )
    return 0
