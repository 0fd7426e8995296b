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

logger = logging.getLogger("stratus")


def create_app() -> RegistryApp:
    """Build the application from the environment; uvicorn calls this in each worker process."""
    config = load_config(os.environ)
    return RegistryApp(config, storage.open_storage(config))


def logging_config(level: str) -> dict[str, Any]:
    """Return a dictConfig that writes Stratus's and uvicorn's lines to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "stratus": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            # Stratus writes its own access line, with the time taken; uvicorn's would repeat it.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "botocore": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }


def run_server(config: Config, *, workers: int) -> int:
    """Serve until stopped; return the exit status."""
    log_config = logging_config(config.log_level)
    logging.config.dictConfig(log_config)
    logger.info(
        "Stratus %s serving %s on %s:%d with %d worker(s); index freshness %gs, "
        "manifest cache %d bytes, blob cache %d entries, presign expiry %ds.",
        __version__, config.storage_location, config.host, config.port, workers,
        config.index_freshness, config.manifest_cache_bytes, config.blob_cache_entries, config.presign_expiry,
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
    )
    return 0
