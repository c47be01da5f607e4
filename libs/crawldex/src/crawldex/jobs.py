"""Job functions that RQ runs, by import path (``crawldex.jobs.index_page``).

The worker builds its services once (`install_runtime`) and every job reuses them. A job that fails
raises, so RQ records the failure, retries it and finally keeps it in the failed registry.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job

from crawldex.adapters.fetching import FetchError
from crawldex.adapters.firecrawl import CrawlResultsError
from crawldex.adapters.queue import change_delivery_id, index_job_id, removal_job_id
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE
from crawldex.crawls import (
    ReconciliationUnavailableError,
    crawl_kind,
    reconcile,
    record_index_end,
    record_index_ends,
)
from crawldex.db.change_events import ChangeEventRepository
from crawldex.db.tables import ChangeEventStatus
from crawldex.errors import DependencyUnavailableError, EmbedderError, is_outage
from crawldex.logs import log_context
from crawldex.models import IndexOutcome, IndexStatus, PageDocument, utc_now
from crawldex.operations import OperationRecord, OperationSink
from crawldex.services import RescrapeServices, Services
from crawldex.telemetry.metrics import (
    JOB_DURATION,
    JOBS_FAILED,
    JOBS_FINISHED,
    JOBS_RETRIED,
    JOBS_STARTED,
    STAGE_DURATION,
)
from crawldex.telemetry.tracing import (
    TRACE_META_KEY,
    extracted_context,
    queue_span_attributes,
    span_context_of,
    tracer,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

_local = threading.local()


class JobLoop:
    """A persistent event loop that runs one job's coroutine at a time, and leaves nothing behind.

    If a job times out (our deadline, or RQ's death penalty raised into the loop) or fails, no task
    of it may survive: a leftover task would resume during the next job and could write an old
    version of a page over a newer one.
    """

    # Our own deadline fires this long before RQ's job timeout, so a slow job is cancelled cleanly
    # inside the loop rather than interrupted by RQ's death penalty in the middle of a write.
    TIMEOUT_MARGIN_SECONDS = 10.0

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        limit = None if timeout is None else max(1.0, timeout - self.TIMEOUT_MARGIN_SECONDS)
        try:
            # The job's log and trace context (contextvars) must reach the coroutine.
            return self._runner.run(_within(coroutine, limit), context=contextvars.copy_context())
        except BaseException:
            self._cancel_leftovers()
            raise

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks(self._runner.get_loop()) if not task.done()]

    def _cancel_leftovers(self) -> None:
        pending = self.pending_tasks()
        for task in pending:
            task.cancel()
        if pending:
            self._runner.get_loop().run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        self._runner.close()


async def _within(coroutine: Coroutine[Any, Any, T], limit: float | None) -> T:
    """``coroutine`` in the runner's own task, cancelled after ``limit`` seconds (TimeoutError):
    `asyncio.wait_for` would run it in a second task, one more for every job."""
    async with asyncio.timeout(limit):
        return await coroutine


class WorkerRuntime:
    """The services of one worker thread, bound to that thread's job loop: the index services (model,
    store), the rescrape services (fetcher), or both (the embedded mode's consumer)."""

    def __init__(
        self, loop: JobLoop, *, index: Services | None = None, rescrape: RescrapeServices | None = None
    ) -> None:
        self.loop = loop
        self._index = index
        self._rescrape = rescrape

    @property
    def index(self) -> Services:
        if self._index is None:
            raise RuntimeError("this worker has no index services: run index jobs on an index-worker")
        return self._index

    @property
    def rescrape(self) -> RescrapeServices:
        if self._rescrape is None:
            raise RuntimeError("this worker has no rescrape services: run rescrape jobs on a rescrape-worker")
        return self._rescrape

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        return self.loop.run(coroutine, timeout=timeout)

    def close(self) -> None:
        if self._rescrape is not None:
            # An embedded consumer shares the index services' operation writer; close it once.
            self.loop.run(self._rescrape.aclose(close_operations=self._index is None))
        if self._index is not None:
            self.loop.run(self._index.aclose())
        self.loop.close()


def install_runtime(runtime: WorkerRuntime | None) -> None:
    """Make ``runtime`` the one the jobs of the calling thread use."""
    _local.runtime = runtime


def current_runtime() -> WorkerRuntime:
    runtime: WorkerRuntime | None = getattr(_local, "runtime", None)
    if runtime is None:
        raise RuntimeError("no crawldex worker runtime in this thread: start jobs through a crawldex worker")
    return runtime


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value


def _no_more_retries() -> None:
    """Make this run the last: RQ reads `retries_left` of the job it is performing when the job fails."""
    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def _is_last_try() -> bool:
    job = get_current_job()
    return job is None or not job.retries_left


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4000]


@dataclass(frozen=True)
class _Batched:
    """A batched job's share of its batch: its page's outcome, when the batch started (the job's duration
    counts from there: it waited for its batch), and whether its crawl's page was recorded with the batch."""

    outcome: IndexOutcome
    started: float
    crawl_recorded: bool


def index_together(jobs: Sequence[Job]) -> None:
    """Index the pages of several queued index jobs as one batch (`IndexingPipeline.index_many`), and record
    the crawls' pages as indexed in one write; each job, when RQ performs it, then takes its page's outcome
    instead of indexing the page itself.

    Should the batch fail on its pages (an input the embedder refuses, a page that breaks the model),
    nothing is kept: each job indexes its page on its own, so an error is the job's own and RQ retries
    only the jobs that fail alone. Should it fail because a dependency is unavailable (`is_outage`: the
    embedder down or overloaded after its own retries, Qdrant, PostgreSQL, a document lock), every job
    fails at once with that error and RQ retries each after its wait: indexing the pages one by one would
    meet the same outage once a page, each time after the adapters' own retries. Should only the crawl
    record fail, each job records its own page, as an unbatched job does.
    """
    runtime = current_runtime()
    services = runtime.index
    pages: dict[str, PageDocument] = {}
    for job in jobs:
        try:
            pages[job.id] = PageDocument.model_validate(job.args[0])
        except (IndexError, ValidationError):
            continue  # the job fails on its own, with its own error
    if len(pages) < 2:
        return
    started = time.perf_counter()
    carriers = [job.meta.get(TRACE_META_KEY) for job in jobs]
    traced = [span_context_of(carrier) for carrier in carriers if isinstance(carrier, dict)]
    links = [Link(span_context) for span_context in traced if span_context is not None]

    async def index_batch() -> tuple[list[IndexOutcome], bool]:
        outcomes = await services.pipeline.index_many(list(pages.values()))
        try:
            await record_index_ends(
                services.crawls, [(page, job_id) for job_id, page in pages.items()], failed=False
            )
        except Exception as exc:
            # Each job then records its own page, and fails (and is retried) on its own if it cannot.
            log.warning(
                "could not record a batch's crawl pages (%s); each job records its own", _error_text(exc)
            )
            return outcomes, False
        return outcomes, True

    with (
        tracer().start_as_current_span(
            "index batch", links=links, attributes={"crawldex.batch_pages": len(pages)}
        ),
        log_context(job_ids=",".join(pages)),
    ):
        try:
            outcomes, recorded = runtime.run(
                index_batch(), timeout=services.settings.index_job_timeout_seconds
            )
        except Exception as exc:
            if is_outage(exc):
                log.warning(
                    "a batch of %d pages failed (%s); its jobs fail with it and are retried",
                    len(pages),
                    _error_text(exc),
                )
                _local.failed = dict.fromkeys(pages, exc)
                return
            log.warning(
                "a batch of %d pages failed (%s); each is indexed on its own", len(pages), _error_text(exc)
            )
            return
    _local.indexed = {
        job_id: _Batched(outcome, started, recorded) for job_id, outcome in zip(pages, outcomes, strict=True)
    }


def forget_batch() -> None:
    """Drop the outcomes of a batch whose jobs have all been performed (or that was abandoned)."""
    _local.indexed = {}
    _local.failed = {}


def holds_share_of_batch(job_id: str) -> bool:
    """Whether the job's page was indexed with its batch (or met its batch's outage): performing it then
    takes no indexing of its own."""
    return job_id in getattr(_local, "indexed", {}) or job_id in getattr(_local, "failed", {})


def _share_of_batch(job_id: str | None) -> _Batched | DependencyUnavailableError | None:
    """The job's share of this worker's batch: its outcome, or the outage its batch met (`index_together`)
    as the job's own error; None if the job was not batched."""
    if job_id is None:
        return None
    failed: dict[str, DependencyUnavailableError] = getattr(_local, "failed", {})
    outage = failed.pop(job_id, None)
    if outage is not None:
        return DependencyUnavailableError(outage.dependency, f"the batch this job was in failed: {outage}")
    indexed: dict[str, _Batched] = getattr(_local, "indexed", {})
    return indexed.pop(job_id, None)


def index_page(page: dict[str, Any], change_event_id: int | None = None) -> dict[str, Any]:
    runtime = current_runtime()
    services = runtime.index
    settings = services.settings
    document = PageDocument.model_validate(page)
    current = get_current_job()
    job_id = current.id if current is not None else None
    share = _share_of_batch(job_id)
    batched = share if isinstance(share, _Batched) else None

    async def index() -> IndexOutcome:
        outcome = batched.outcome if batched is not None else await services.pipeline.index(document)
        if document.crawl_id and job_id and not (batched is not None and batched.crawl_recorded):
            await record_index_end(services.crawls, document, job_id, failed=False)
        if change_event_id is not None:
            # Superseded: newer content was indexed meanwhile, so this change brought nothing new.
            changed = outcome.status in (IndexStatus.INDEXED, IndexStatus.EMPTY)
            await services.change_events.finish(
                change_event_id, ChangeEventStatus.INDEXED if changed else ChangeEventStatus.UNCHANGED
            )
        return outcome

    with _instrumented_job(
        QUEUE_INDEXING,
        settings.index_job_retries,
        services.operations,
        document.url,
        document.crawl_id,
        started=batched.started if batched is not None else None,
    ):
        try:
            if isinstance(share, DependencyUnavailableError):
                raise share
            outcome = runtime.run(index(), timeout=settings.index_job_timeout_seconds)
        except BaseException as exc:
            if isinstance(exc, EmbedderError) and exc.status_code in _REFUSED_INPUT:
                _no_more_retries()  # the embedder refuses this page's chunks: trying again will not help
            _fail_change_event(runtime, services.change_events, change_event_id, exc)
            _fail_crawl_page(runtime, services, document, job_id, exc)
            raise
    return outcome.as_job_result()


# TEI's answers for inputs it will not embed: too large (413), or longer than the model takes (422).
_REFUSED_INPUT = (413, 422)


def _fail_crawl_page(
    runtime: WorkerRuntime, services: Services, document: PageDocument, job_id: str | None, exc: BaseException
) -> None:
    """After the last try, the crawl's page is recorded failed (for the crawl's counts); before it, RQ retries."""
    if not document.crawl_id or job_id is None or not _is_last_try():
        return
    try:
        runtime.run(record_index_end(services.crawls, document, job_id, failed=True, error=_error_text(exc)))
    except Exception:
        log.exception("could not record the failed page %s of crawl %s", document.url, document.crawl_id)


def reconcile_crawl(crawl_id: str, kind: str = "crawl") -> dict[str, Any]:
    """Read a crawl's results back from Firecrawl and queue every page whose webhook never came (see
    `crawldex.crawls`). Runs on the rescrape queue: the rescrape-worker has the Firecrawl client."""
    runtime = current_runtime()
    services = runtime.rescrape
    settings = services.settings
    current = get_current_job()

    async def run() -> dict[str, Any]:
        if services.firecrawl is None:
            raise ReconciliationUnavailableError(
                "this worker has no Firecrawl client (CRAWLDEX_FIRECRAWL_URL is not set): cannot reconcile"
            )
        report = await reconcile(
            crawl_id,
            crawl_kind(kind),
            source=services.firecrawl,
            crawls=services.crawls,
            queue=services.queue,
            job_id=current.id if current is not None else None,
        )
        return report.as_job_result()

    with _instrumented_job(
        QUEUE_RESCRAPE, settings.rescrape_job_retries, services.operations, None, crawl_id
    ):
        try:
            return runtime.run(run(), timeout=settings.reconcile_job_timeout_seconds)
        except CrawlResultsError as exc:
            if not exc.retryable:
                _no_more_retries()  # a 404 (unknown or expired crawl), a refused key: trying again will not help
            raise
        except (ReconciliationUnavailableError, ValueError):
            _no_more_retries()
            raise


def remove_page(
    url: str, change_event_id: int | None = None, received_at: str | None = None
) -> dict[str, Any]:
    """A page is gone: its chunks leave the index, its change event ends `gone`. ``received_at`` is when
    it was seen gone: content indexed after that is newer, and stays."""
    runtime = current_runtime()
    services = runtime.index
    seen_gone = datetime.fromisoformat(received_at) if received_at else None

    async def remove() -> int:
        removed = await services.pipeline.remove(url, received_at=seen_gone)
        if change_event_id is not None:
            await services.change_events.finish(change_event_id, ChangeEventStatus.GONE)
        return removed

    with _instrumented_job(
        QUEUE_INDEXING, services.settings.index_job_retries, services.operations, url, None
    ):
        try:
            removed = runtime.run(remove(), timeout=services.settings.index_job_timeout_seconds)
        except BaseException as exc:
            _fail_change_event(runtime, services.change_events, change_event_id, exc)
            raise
    return {"url": url, "status": "gone", "chunks_removed": removed}


def rescrape_page(change_event_id: int) -> dict[str, Any]:
    """Fetch a changed page now, then hand it to the indexing queue (or its removal, if it is gone)."""
    runtime = current_runtime()
    services = runtime.rescrape
    settings = services.settings

    async def rescrape() -> dict[str, Any]:
        event = await services.change_events.start_fetching(change_event_id)
        if event is None:
            raise LookupError(f"change event {change_event_id} does not exist")
        if (
            event.status != ChangeEventStatus.FETCHING
        ):  # already ended (a repeated or late job): nothing to do
            return {"change_event_id": change_event_id, "status": event.status}
        # The content is as new as the moment the fetch starts, not the moment it returns: a slow fetch
        # of an older version must not win against a faster, newer one.
        fetch_started = utc_now()
        with tracer().start_as_current_span("stage fetch", attributes={"crawldex.stage": "fetch"}):
            started = time.perf_counter()
            try:
                page = await services.fetcher.fetch(event.url)
            except FetchError as exc:
                if not exc.retryable:
                    _no_more_retries()  # a permanent failure (blocked address, 4xx, too large): fail now
                raise
            finally:
                STAGE_DURATION.labels("fetch").observe(time.perf_counter() - started)
        queue = services.queue
        if page.gone:
            job_id = removal_job_id(change_event_id)
            await services.change_events.start_indexing(change_event_id, job_id)
            # Handed on however full Redis is: refused, the fetched page would be lost with the event.
            removal = partial(queue.enqueue_removal, received_at=fetch_started, refuse_when_full=False)
            await asyncio.to_thread(removal, event.url, change_event_id)
            return {
                "change_event_id": change_event_id,
                "status": "gone",
                "http_status": page.status_code,
                "job_id": job_id,
            }
        document = PageDocument(
            url=page.url,
            markdown=page.markdown,
            title=_clip(page.title, 4096),
            description=_clip(page.description, 16384),
            language=_clip(page.language, 64),
            source="rescrape",
            received_at=fetch_started,
        )
        # Recorded before the job is queued: the index job may finish (and close the event) at once.
        job_id = index_job_id(document, change_delivery_id(change_event_id))
        await services.change_events.start_indexing(change_event_id, job_id)
        hand_on = partial(queue.enqueue_index, change_event_id=change_event_id, refuse_when_full=False)
        await asyncio.to_thread(hand_on, document)
        return {"change_event_id": change_event_id, "status": "fetched", "url": page.url, "job_id": job_id}

    with _instrumented_job(QUEUE_RESCRAPE, settings.rescrape_job_retries, services.operations, None, None):
        try:
            return runtime.run(rescrape(), timeout=settings.rescrape_job_timeout_seconds)
        except BaseException as exc:
            _fail_change_event(runtime, services.change_events, change_event_id, exc)
            raise


def _fail_change_event(
    runtime: WorkerRuntime, events: ChangeEventRepository, change_event_id: int | None, exc: BaseException
) -> None:
    """After the last try, the change event ends `failed` with the error; before it, RQ retries."""
    if change_event_id is None or not _is_last_try():
        return
    try:
        runtime.run(events.finish(change_event_id, ChangeEventStatus.FAILED, error=_error_text(exc)))
    except Exception:
        log.exception("could not mark change event %s failed", change_event_id)


@contextmanager
def _instrumented_job(
    queue: str,
    max_retries: int,
    operations: OperationSink,
    url: str | None,
    crawl_id: str | None,
    *,
    started: float | None = None,
) -> Iterator[None]:
    """Metrics, the job's span (continuing the trace that queued it), log context, operation record.
    The job's duration counts from ``started`` (`time.perf_counter`) when given, else from now."""
    job = get_current_job()
    job_id = job.id if job is not None else None
    carrier = job.meta.get(TRACE_META_KEY) if job is not None else None
    is_retry = job is not None and job.retries_left is not None and job.retries_left < max_retries
    JOBS_STARTED.labels(queue).inc()
    if is_retry:
        JOBS_RETRIED.labels(queue).inc()
    started = time.perf_counter() if started is None else started
    error: str | None = None
    with (
        extracted_context(carrier if isinstance(carrier, dict) else None),
        tracer().start_as_current_span(
            f"job {queue}",
            kind=SpanKind.CONSUMER,
            attributes=queue_span_attributes(queue, {"crawldex.job_id": job_id or ""}),
        ) as span,
        log_context(job_id=job_id, url=url, crawl_id=crawl_id),
    ):
        try:
            yield
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, error))
            JOBS_FAILED.labels(queue).inc()
            raise
        else:
            JOBS_FINISHED.labels(queue).inc()
        finally:
            seconds = time.perf_counter() - started
            JOB_DURATION.labels(queue, "failed" if error else "finished").observe(seconds)
            operations.record(
                OperationRecord(
                    operation_type="job",
                    operation_name=queue,
                    duration_ms=seconds * 1000,
                    success=error is None,
                    error=error,
                    document_url=url,
                    job_id=job_id,
                    crawl_id=crawl_id,
                )
            )
