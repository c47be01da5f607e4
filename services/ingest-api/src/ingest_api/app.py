"""The ingest-api application: a thin HTTP layer over the core's services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from crawldex.adapters.embedder import Embedder
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.errors import ConfigurationError
from crawldex.heap import freeze_startup_objects
from crawldex.services import Services
from crawldex.telemetry.metrics import initialize_label_sets
from crawldex.telemetry.queue_metrics import QueueCollector
from crawldex.worker import EmbeddedConsumer
from ingest_api.errors import install_error_handlers
from ingest_api.middleware import BodySizeLimit, cors_options
from ingest_api.rate_limit import RateLimitMiddleware
from ingest_api.routers import (
    change_events,
    crawls,
    health,
    indexing,
    jobs,
    metrics,
    operations,
    search,
    webhooks,
)
from ingest_api.telemetry import RequestTelemetry

log = logging.getLogger(__name__)


def check_settings(settings: Settings) -> None:
    if settings.api_token is None or not settings.api_token.get_secret_value():
        raise ConfigurationError("CRAWLDEX_API_TOKEN is required: it guards every /api/* route but webhooks")
    if settings.firecrawl_webhook_secret is None:
        log.warning("CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET is unset: Firecrawl webhooks will be refused (503)")
    if settings.embedded_workers and settings.qdrant_url:
        log.warning(
            "embedded workers with a Qdrant server: fine, but separate index-worker processes scale better"
        )
    log.info("ingest-api connects to %s", settings.startup_summary())
    if settings.rate_limit_enabled:
        log.info(
            "rate limits: /api/* %d a minute per client (bursts of %d), webhooks %d a minute per sender "
            "(bursts of %d)",
            settings.rate_limit_api_per_minute,
            settings.rate_limit_api_burst,
            settings.rate_limit_webhook_per_minute,
            settings.rate_limit_webhook_burst,
        )
    else:
        log.warning("CRAWLDEX_RATE_LIMIT_ENABLED is false: no rate limits")


def create_app(settings: Settings, *, embedder: Embedder | None = None, freeze_heap: bool = False) -> FastAPI:
    """The app; ``embedder`` hands it a model already loaded in this process (tests, tools).

    ``freeze_heap`` (the service's own process) leaves what start-up built out of garbage collection
    (`crawldex.heap.freeze_startup_objects`) once the app has started.
    """
    check_settings(settings)
    initialize_label_sets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(settings, embedder=embedder)
        consumer: EmbeddedConsumer | None = None
        if settings.embedded_workers:
            consumer = EmbeddedConsumer(settings, [QUEUE_INDEXING, QUEUE_RESCRAPE], services)
            consumer.start()
            log.info("embedded mode: consuming queue %r in this process", QUEUE_INDEXING)
        app.state.services = services
        app.state.queue_metrics.register(
            QueueCollector(services.queue.connection, [QUEUE_INDEXING, QUEUE_RESCRAPE])
        )
        if freeze_heap:
            freeze_startup_objects()
        try:
            yield
        finally:
            stopped = True
            if consumer is not None:
                # Let a running job finish (it may take up to the job timeout) without blocking the loop.
                timeout = settings.index_job_timeout_seconds + 30
                stopped = await asyncio.to_thread(consumer.stop, timeout)
            if stopped:
                await services.aclose()
            else:
                log.error("the embedded consumer is still running a job; leaving its store open at exit")

    app = FastAPI(
        title="crawldex ingest-api",
        version="0.1.0",
        description="Webhooks from Firecrawl, the index API, hybrid search and job status.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry server spans (used when a tracer provider is configured);
        # metrics are crawldex's Prometheus ones, and request failures are in crawldex's logs.
        telemetry={"tracing": True, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    # The queue collector lives in a registry of this app, not the process's default one: several
    # apps in one process (tests) must not register the same metric names twice.
    app.state.queue_metrics = CollectorRegistry()
    install_error_handlers(app)
    # The webhooks are the busiest routes, so theirs go first on the app's own router instead of in an
    # included router: FastAPI (0.165) matches an included router's routes twice a request, through its
    # inclusion context, ~1,100 bytecodes of a webhook's ~8,800 (benchmarks/ANALYSIS.md). Their router
    # has no prefix, tags or dependencies of an inclusion to lose.
    app.router.routes[:0] = webhooks.router.routes
    for router in (
        indexing.router,
        jobs.router,
        search.router,
        operations.router,
        change_events.router,
        crawls.router,
        health.router,
        metrics.router,
    ):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.rate_limit_enabled:  # outside the body limit: a refused request's body is never read
        app.add_middleware(RateLimitMiddleware, settings=settings)
    if settings.cors_allow_origins:  # outside the limiter, so a browser can read its 429s
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_allow_origins))
    app.add_middleware(RequestTelemetry)  # outermost: it sees every answer, the body limit's 413s included
    return app
