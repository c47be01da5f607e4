"""`crawldex-index-worker`: an RQ worker on the `indexing` queue.

Services (the model above all) are built once per process and reused by every job. SIGTERM lets the
running job finish (RQ's warm shutdown); a second SIGTERM stops at once.
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
        prog="crawldex-index-worker", description="RQ worker of the indexing queue."
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "crawldex-index-worker")
    try:
        run_worker(settings, "index-worker", burst=args.burst)
    except ConfigurationError as exc:
        logging.getLogger("index_worker").error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
