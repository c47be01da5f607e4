"""Every Prometheus metric crawldex exports, in one place.

Names start with ``crawldex_``; labels take values from small fixed sets (route templates, queue
names, stage names, status classes), never a URL, a crawl id or anything a sender chooses.
docs/operations.md is the reference for each metric; the dashboards and alerts in
charts/crawldex/files/ query them.

Workers run jobs in their own process (no fork per job), so the default registry is complete in
every process and no multiprocess mode is needed.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)

# Seconds: webhook handling is milliseconds, jobs are seconds to minutes.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

KNOWN_FIRECRAWL_EVENTS = frozenset(
    {
        "crawl.started",
        "crawl.page",
        "crawl.completed",
        "crawl.cancelled",
        "crawl.failed",
        "batch_scrape.started",
        "batch_scrape.page",
        "batch_scrape.completed",
        "extract.started",
        "extract.completed",
        "extract.failed",
        "monitor.page",
        "monitor.check.completed",
    }
)


def event_label(event_type: str) -> str:
    """Sender-chosen event names are bounded to the known set."""
    return event_type if event_type in KNOWN_FIRECRAWL_EVENTS else "other"


HTTP_REQUESTS = Counter(
    "crawldex_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "crawldex_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=FAST_BUCKETS,
)
WEBHOOKS_RECEIVED = Counter(
    "crawldex_webhooks_received",
    "Webhook deliveries accepted, by source and event type.",
    ["source", "event"],
)
WEBHOOKS_REJECTED = Counter(
    "crawldex_webhooks_rejected",
    "Webhook deliveries refused, by source and reason.",
    ["source", "reason"],
)
RATE_LIMITED = Counter(
    "crawldex_rate_limited",
    "Requests refused with 429 by the rate limiter, by limit: api (/api/*) or webhook (/api/webhook/*).",
    ["limit"],
)
RATE_LIMIT_FAIL_OPEN = Counter(
    "crawldex_rate_limit_fail_open",
    "Requests let through unchecked because the rate limiter's Redis did not answer, by limit.",
    ["limit"],
)
JOBS_ENQUEUED = Counter("crawldex_jobs_enqueued", "Jobs put on a queue.", ["queue"])
JOBS_DEDUPLICATED = Counter(
    "crawldex_jobs_deduplicated",
    "Enqueues that found an identical job already pending or done.",
    ["queue"],
)
JOBS_STARTED = Counter("crawldex_jobs_started", "Jobs a worker started (retries included).", ["queue"])
JOBS_FINISHED = Counter("crawldex_jobs_finished", "Jobs that completed successfully.", ["queue"])
JOBS_FAILED = Counter("crawldex_jobs_failed", "Job runs that raised (each try counts).", ["queue"])
JOBS_RETRIED = Counter(
    "crawldex_jobs_retried", "Job runs that were a retry of an earlier failed run.", ["queue"]
)
JOB_DURATION = Histogram(
    "crawldex_job_duration_seconds",
    "Time a worker spent on a job, by queue and outcome.",
    ["queue", "outcome"],
    buckets=JOB_BUCKETS,
)
STAGE_DURATION = Histogram(
    "crawldex_stage_duration_seconds",
    "Time of each pipeline stage (fetch, clean, chunk, embed, keyword, upsert, delete, record), once per batch of pages.",
    ["stage"],
    buckets=JOB_BUCKETS,
)
DOCUMENTS_PROCESSED = Counter(
    "crawldex_documents_processed",
    "Documents the pipeline handled, by result: indexed, unchanged (skipped), empty, superseded, gone (removed).",
    ["result"],
)
CHUNKS_INDEXED = Counter("crawldex_chunks_indexed", "Chunks embedded and written to the vector store.")
INDEX_BATCH_PAGES = Histogram(
    "crawldex_index_batch_pages",
    "Pages an index worker indexed together (one lock pass, embedder call, upsert and record write).",
    buckets=BATCH_BUCKETS,
)
EMBED_BATCH_SIZE = Histogram(
    "crawldex_embedder_batch_size",
    "Texts per embedder call, by embedder (local, tei) and purpose.",
    ["embedder", "purpose"],
    buckets=BATCH_BUCKETS,
)
EMBED_DURATION = Histogram(
    "crawldex_embedder_request_duration_seconds",
    "Time of one embedder call, by embedder and purpose.",
    ["embedder", "purpose"],
    buckets=(*FAST_BUCKETS, 30.0, 60.0),
)
TEI_RESPONSES = Counter("crawldex_tei_responses", "TEI HTTP responses by status code.", ["code"])
SEARCHES = Counter(
    "crawldex_searches", "Searches answered, by mode and outcome (ok, error).", ["mode", "outcome"]
)
SEARCH_DURATION = Histogram(
    "crawldex_search_duration_seconds",
    "Time to answer a search, by mode.",
    ["mode"],
    buckets=FAST_BUCKETS,
)
SEARCH_RESULTS = Histogram(
    "crawldex_search_results",
    "Results returned per search, by mode.",
    ["mode"],
    buckets=(0, 1, 5, 10, 20, 50, 100),
)
RECONCILIATIONS = Counter(
    "crawldex_reconciliations",
    "Crawl reconciliation runs, by outcome: succeeded, incomplete (the crawl still ran), failed.",
    ["outcome"],
)
RECONCILED_PAGES = Counter(
    "crawldex_reconciled_pages",
    "Pages reconciliation found in Firecrawl's results that no webhook had brought: recovered (queued for "
    "indexing) or failed (recorded as failed pages).",
    ["result"],
)
RECEIVED_PAGE_RECORDS_FAILED = Counter(
    "crawldex_received_page_records_failed",
    "Pages a webhook brought whose crawl record (pending) could not be written; their index jobs record "
    "them when they end.",
)

# Queue state, read from Redis at scrape time by `crawldex.telemetry.queue_metrics.QueueCollector`
# (ingest-api serves it; every replica reports the same values, so dashboards take max by queue):
#   crawldex_queue_depth{queue}                    jobs waiting (LLEN rq:queue:<name>)
#   crawldex_queue_oldest_job_age_seconds{queue}   age of the job at the head of the queue (0 if empty)
#   crawldex_jobs_running{queue}                   jobs in the started registry
#   crawldex_jobs_scheduled{queue}                 retries waiting for their time
#   crawldex_jobs_failed_registry{queue}           jobs in the failed registry (failed for good)
#   crawldex_workers{queue}                        workers listening on the queue
#   crawldex_redis_memory_used_bytes               Redis's used_memory (INFO memory; absent if INFO is denied)
#   crawldex_redis_maxmemory_bytes                 Redis's maxmemory (0: none)


# Label values are few (see above), so every series looked up once is kept for good.
_SERIES: dict[tuple[Any, ...], Any] = {}


def series(metric: _Metric, *label_values: str) -> _Metric:
    """``metric.labels(*label_values)``, looked up once: for code run on every request, where
    prometheus_client's checks of the labels cost about 2.5 us a call (four calls were 2 % of a webhook's
    instructions)."""
    key = (metric, *label_values)
    found: _Metric | None = _SERIES.get(key)
    if found is None:
        found = _SERIES[key] = metric.labels(*label_values)
    return found


def initialize_label_sets(queues: tuple[str, ...] = ("indexing", "rescrape")) -> None:
    """Create the series of known label values at zero, so `rate` and `increase` see a job's first
    run, and dashboards show 0 rather than "no data" before the first event."""
    for queue in queues:
        for counter in (
            JOBS_ENQUEUED,
            JOBS_DEDUPLICATED,
            JOBS_STARTED,
            JOBS_FINISHED,
            JOBS_FAILED,
            JOBS_RETRIED,
        ):
            counter.labels(queue)
    for stage in ("fetch", "clean", "chunk", "embed", "keyword", "upsert", "delete", "record"):
        STAGE_DURATION.labels(stage)
    for result in ("indexed", "unchanged", "empty", "superseded", "gone"):
        DOCUMENTS_PROCESSED.labels(result)
    for mode in ("hybrid", "semantic", "keyword"):
        for outcome in ("ok", "error"):
            SEARCHES.labels(mode, outcome)
    for limit in ("api", "webhook"):
        RATE_LIMITED.labels(limit)
        RATE_LIMIT_FAIL_OPEN.labels(limit)
    for outcome in ("succeeded", "incomplete", "failed"):
        RECONCILIATIONS.labels(outcome)
    for result in ("recovered", "failed"):
        RECONCILED_PAGES.labels(result)
