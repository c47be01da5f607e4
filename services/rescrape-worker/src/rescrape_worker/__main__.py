"""`crawldex-rescrape-worker`: an RQ worker on the `rescrape` queue.

It needs no model and no vector store: rescrape jobs fetch a page and hand it to the `indexing`
queue. The rescrape jobs themselves arrive with change detection (changedetection.io webhooks);
until then this worker serves the queue so the deployment, its probes and its scaling are in place.
"""

from __future__ import annotations

import argparse

from rq import Queue
from rq.serializers import JSONSerializer

from crawldex.adapters.queue import connect_redis
from crawldex.config import QUEUE_RESCRAPE, Settings
from crawldex.logs import configure_logging
from crawldex.telemetry.tracing import configure_tracing
from crawldex.worker import CrawldexWorker, serve_metrics, worker_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="crawldex-rescrape-worker", description="RQ worker of the rescrape queue."
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "crawldex-rescrape-worker")
    serve_metrics(settings)
    connection = connect_redis(settings.redis_url)
    queue = Queue(QUEUE_RESCRAPE, connection=connection, serializer=JSONSerializer)
    worker = CrawldexWorker([queue], connection=connection, name=worker_name("rescrape-worker"))
    worker.work(burst=args.burst, with_scheduler=not args.burst, logging_level=settings.log_level)


if __name__ == "__main__":
    main()
