"""`crawldex-rescrape-worker`: an RQ worker on the `rescrape` queue.

It fetches changed pages (Firecrawl's scrape API, or the built-in fetcher) and hands them to the
`indexing` queue; it needs no model and no vector store. SIGTERM lets the running job finish.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crawldex.config import Settings
from crawldex.errors import ConfigurationError
from crawldex.logs import configure_logging
from crawldex.telemetry.tracing import configure_tracing
from crawldex.worker import run_worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="crawldex-rescrape-worker", description="RQ worker of the rescrape queue."
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "crawldex-rescrape-worker")
    try:
        run_worker(settings, "rescrape-worker", burst=args.burst)
    except ConfigurationError as exc:
        logging.getLogger("rescrape_worker").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
