"""`crawldex-ingest-api`: serve the API with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from crawldex.config import Settings
from crawldex.errors import ConfigurationError
from crawldex.logs import configure_logging
from crawldex.telemetry.tracing import configure_tracing
from ingest_api.app import create_app


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "crawldex-ingest-api")
    try:
        app = create_app(settings, freeze_heap=True)
    except ConfigurationError as exc:
        logging.getLogger("ingest_api").error("%s", exc)
        sys.exit(2)
    # One worker process: scale with replicas (and the embedded store is single-process anyway).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
