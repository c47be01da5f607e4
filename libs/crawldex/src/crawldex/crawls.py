"""Crawl bookkeeping and reconciliation: no page of a Firecrawl crawl is lost to a missed webhook.

Self-hosted Firecrawl delivers each webhook once and never retries, so a page whose webhook was lost (the
API down, a network failure, a 503) would never be indexed. Every page a webhook brings is recorded with
the index job it was queued as (`record_received`), and that job records how it ended (`record_index_end`).
When ``crawl.completed`` or ``batch_scrape.completed`` arrives and Firecrawl's API is configured
(``CRAWLDEX_FIRECRAWL_URL``), a reconciliation is queued (`schedule_on_completion`): it reads the crawl's
results back from Firecrawl (``GET /v2/crawl/{id}``, page by page) and queues an index job for every page
whose webhook never came (`reconcile`), under one delivery id per crawl, so running it again queues nothing
new. An operator can ask for one at any time (`request_reconciliation`, `run_reconciliation`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol, cast, get_args

from crawldex.adapters.firecrawl import (
    CrawlKind,
    CrawlResultsPage,
    FirecrawlScraper,
    checked_crawl_id,
)
from crawldex.adapters.queue import EnqueuedJob, JobQueue, connect_redis
from crawldex.config import Settings
from crawldex.db.crawls import (
    RECONCILE_SOURCE,
    CrawlRepository,
    PageDelivery,
    reconcile_delivery_id,
)
from crawldex.db.database import Database
from crawldex.db.tables import CrawlPageState, ReconciliationOutcome
from crawldex.errors import ConfigurationError, InvalidDocumentError
from crawldex.models import PageDocument
from crawldex.telemetry.metrics import RECEIVED_PAGE_RECORDS_FAILED, RECONCILED_PAGES, RECONCILIATIONS
from crawldex.urls import canonicalize_url
from crawldex.webhooks.firecrawl import read_documents

__all__ = [
    "COMPLETED_EVENTS",
    "CRAWL_KINDS",
    "CrawlResultsSource",
    "ReceivedPagesRecorder",
    "ReconcileReport",
    "ReconciliationUnavailableError",
    "completion_kind",
    "crawl_kind",
    "reconcile",
    "record_index_end",
    "record_index_ends",
    "record_received",
    "request_reconciliation",
    "run_reconciliation",
    "schedule_on_completion",
]

log = logging.getLogger(__name__)

CRAWL_KINDS: tuple[str, ...] = get_args(CrawlKind)
COMPLETED_EVENTS: dict[str, CrawlKind] = {
    "crawl.completed": "crawl",
    "batch_scrape.completed": "batch_scrape",
}
# Firecrawl statuses after which a crawl's results no longer change.
FINISHED_STATUSES = frozenset({"completed", "cancelled", "failed"})


class ReconciliationUnavailableError(ConfigurationError):
    """Reconciliation reads Firecrawl's API, and CRAWLDEX_FIRECRAWL_URL is not set."""


class CrawlResultsSource(Protocol):
    """Where a crawl's results are read back from (`FirecrawlScraper`)."""

    def iter_crawl_results(
        self, crawl_id: str, kind: CrawlKind = "crawl"
    ) -> AsyncIterator[CrawlResultsPage]: ...


def crawl_kind(kind: str) -> CrawlKind:
    """``kind`` as a crawl kind (``crawl`` or ``batch_scrape``), else ValueError."""
    if kind not in CRAWL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CRAWL_KINDS)}, not {kind!r}")
    return cast(CrawlKind, kind)


def completion_kind(event_type: str) -> CrawlKind | None:
    """The kind of crawl a ``*.completed`` event ends, None for any other event."""
    return COMPLETED_EVENTS.get(event_type)


def _delivery(page: PageDocument, job_id: str) -> PageDelivery:
    return PageDelivery(
        canonical_url=canonicalize_url(page.url),
        url=page.url,
        source=page.source,
        job_id=job_id,
        received_at=page.received_at,
    )


async def record_received(
    crawls: CrawlRepository, crawl_id: str | None, pages: Sequence[tuple[PageDocument, str]]
) -> None:
    """Record the pages of one delivery, each with the id of the index job it was queued as (one statement)."""
    if crawl_id and pages:
        await crawls.record_pages(crawl_id, [_delivery(page, job_id) for page, job_id in pages])


class ReceivedPagesRecorder:
    """Records the pages webhooks bring, as `record_received` does, behind the requests that brought them.

    A webhook's answer waits for its jobs (in Redis), not for this bookkeeping: `record` puts the pages in
    line and returns, and a writer task on the event loop writes what is in line in one transaction, then
    whatever arrived meanwhile. Before a write it waits up to ``gather_seconds`` for more deliveries to
    join it (not when a write's worth is already in line): a write costs the API about as much CPU for one
    page as for ten, so a steady trickle of webhooks, each alone, would cost it a write apiece.
    Nothing depends on a write's timing: the writes and the index jobs' own records land in either order
    (`CrawlRepository.record_deliveries`), and a write that fails is logged and its pages are left to their
    jobs, which record each page when they end (only ``pending`` is lost meanwhile).

    At most ``max_waiting`` deliveries wait: past that (the database slow or hanging), `record` waits for
    its own write, so memory stays bounded and webhooks slow down instead. `flush` has everything in line
    written at once and waits for it: before a crawl's summary is read or its reconciliation queued (a
    client reads what it sent to this replica), and at shutdown. Bound to the event loop it is first used
    on (the API's).
    """

    def __init__(
        self,
        crawls: CrawlRepository,
        *,
        max_deliveries_per_write: int = 200,
        max_waiting: int = 10_000,
        gather_seconds: float = 0.1,
    ) -> None:
        self._crawls = crawls
        self._max = max_deliveries_per_write
        self._max_waiting = max_waiting
        self._gather_seconds = gather_seconds
        self._waiting: list[tuple[str, list[PageDelivery], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._gathering: asyncio.Future[None] | None = None  # the writer's wait for more deliveries
        self._flushes = 0  # callers of `flush` waiting: the writer gathers nothing meanwhile

    async def record(self, crawl_id: str | None, pages: Sequence[tuple[PageDocument, str]]) -> None:
        if not crawl_id or not pages:
            return
        written = asyncio.get_running_loop().create_future()
        self._waiting.append((crawl_id, [_delivery(page, job_id) for page, job_id in pages], written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        elif len(self._waiting) >= self._max:
            self._stop_gathering()
        if len(self._waiting) > self._max_waiting:
            await asyncio.shield(written)  # a caller that gives up must not cancel the write

    async def flush(self) -> None:
        """Return once every delivery in line when called (and any arriving meanwhile) is written or given up."""
        self._flushes += 1
        try:
            while self._writer is not None and not self._writer.done():
                self._stop_gathering()
                await asyncio.shield(self._writer)
        finally:
            self._flushes -= 1

    def _stop_gathering(self) -> None:
        if self._gathering is not None and not self._gathering.done():
            self._gathering.set_result(None)

    async def _gather(self) -> None:
        """Wait up to ``gather_seconds`` for more deliveries, unless a write's worth is in line already or
        a caller of `flush` waits."""
        if self._gather_seconds <= 0 or self._flushes or len(self._waiting) >= self._max:
            return
        loop = asyncio.get_running_loop()
        self._gathering = loop.create_future()
        timer = loop.call_later(self._gather_seconds, self._stop_gathering)
        try:
            await self._gathering
        finally:
            timer.cancel()
            self._gathering = None

    async def _write_waiting(self) -> None:
        batch: list[tuple[str, list[PageDelivery], asyncio.Future[None]]] = []
        try:
            while self._waiting:
                await self._gather()
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                await self._write(batch)
                for *_, written in batch:
                    if not written.done():
                        written.set_result(None)
                batch = []
        except BaseException:  # cancelled (shutdown): nobody may wait forever
            for *_, written in [*batch, *self._waiting]:
                written.cancel()
            self._waiting = []
            raise

    async def _write(self, batch: list[tuple[str, list[PageDelivery], asyncio.Future[None]]]) -> None:
        try:
            await self._crawls.record_deliveries([(crawl_id, pages) for crawl_id, pages, _ in batch])
        except Exception:
            crawl_ids = sorted({crawl_id for crawl_id, _, _ in batch})
            pages_lost = sum(len(pages) for _, pages, _ in batch)
            RECEIVED_PAGE_RECORDS_FAILED.inc(pages_lost)
            log.exception(
                "could not record %d received pages of crawls %s; their index jobs record them when they end",
                pages_lost,
                ", ".join(crawl_ids[:5]) + (f" and {len(crawl_ids) - 5} more" if len(crawl_ids) > 5 else ""),
            )


async def record_index_end(
    crawls: CrawlRepository, page: PageDocument, job_id: str, *, failed: bool, error: str | None = None
) -> None:
    """The index job of a crawl's page ended: indexed (or unchanged, empty, superseded), or failed for good."""
    await record_index_ends(crawls, [(page, job_id)], failed=failed, error=error)


async def record_index_ends(
    crawls: CrawlRepository,
    ended: Sequence[tuple[PageDocument, str]],
    *,
    failed: bool,
    error: str | None = None,
) -> None:
    """`record_index_end` for the jobs of a batch, in one transaction; pages of no crawl are left out."""
    state = CrawlPageState.FAILED if failed else CrawlPageState.INDEXED
    deliveries = [(page.crawl_id, [_delivery(page, job_id)]) for page, job_id in ended if page.crawl_id]
    if deliveries:
        await crawls.record_deliveries(deliveries, state=state, error=error)


def schedule_on_completion(
    queue: JobQueue, settings: Settings, event_type: str, crawl_id: str | None
) -> EnqueuedJob | None:
    """Queue the reconciliation a ``*.completed`` webhook calls for; None when there is none to queue
    (another event, no crawl id, or Firecrawl's API not configured: reconciliation is off)."""
    kind = completion_kind(event_type)
    if kind is None or not crawl_id or not settings.firecrawl_url:
        return None
    try:
        checked_crawl_id(crawl_id)
    except ValueError as exc:
        log.warning("not reconciling %s: %s", event_type, exc)
        return None
    return queue.enqueue_reconcile(crawl_id, kind, delay_seconds=settings.reconcile_delay_seconds)


def request_reconciliation(
    queue: JobQueue, settings: Settings, crawl_id: str, kind: str = "crawl"
) -> EnqueuedJob:
    """An operator's request: queue a reconciliation now, replacing a finished one (a pending one is kept).

    Raises `ReconciliationUnavailableError` without CRAWLDEX_FIRECRAWL_URL, ValueError for a bad id or kind.
    """
    if not settings.firecrawl_url:
        raise ReconciliationUnavailableError(
            "crawl reconciliation reads the crawl's results from Firecrawl's API: set CRAWLDEX_FIRECRAWL_URL "
            "(and CRAWLDEX_FIRECRAWL_API_KEY if it needs one)"
        )
    return queue.enqueue_reconcile(checked_crawl_id(crawl_id), crawl_kind(kind), rerun=True)


@dataclass
class ReconcileReport:
    crawl_id: str
    kind: str
    outcome: str = ReconciliationOutcome.RUNNING.value
    firecrawl_status: str | None = None
    firecrawl_total: int | None = None
    pages_listed: int = 0  # documents in Firecrawl's results
    pages_known: int = 0  # ... whose page had arrived (or been recovered) already
    pages_recovered: int = 0  # ... queued for indexing now
    pages_failed: int = 0  # ... that are failed pages nobody had reported (recorded as failed)
    job_ids: list[str] = field(default_factory=list)

    def as_job_result(self) -> dict[str, Any]:
        result = asdict(self)
        result["job_ids"] = self.job_ids[:100]  # the job result stays small; the rows have every page
        return result


def _canonical(url: str) -> str:
    try:
        return canonicalize_url(url)
    except InvalidDocumentError:
        return url


async def reconcile(
    crawl_id: str,
    kind: CrawlKind,
    *,
    source: CrawlResultsSource,
    crawls: CrawlRepository,
    queue: JobQueue,
    job_id: str | None = None,
) -> ReconcileReport:
    """Read a crawl's results back and queue every page no webhook brought; record the run and its outcome.

    A page counts as arrived when the crawl has a row for its canonical URL (delivered by webhook, or
    recovered by an earlier run). Recovered pages are queued under the delivery id ``reconcile-<crawl id>``
    and recorded before the next results page is read, so a second run (or a retry after a failure halfway)
    queues nothing twice. Failed pages in the results that nobody reported are recorded as failed pages.
    """
    checked_crawl_id(crawl_id)
    kind = crawl_kind(kind)
    report = ReconcileReport(crawl_id=crawl_id, kind=kind)
    run_id = await crawls.start_reconciliation(crawl_id, kind, job_id)
    try:
        await _reconcile(report, source=source, crawls=crawls, queue=queue)
    except BaseException as exc:
        report.outcome = ReconciliationOutcome.FAILED.value
        RECONCILIATIONS.labels(report.outcome).inc()
        try:
            await crawls.finish_reconciliation(
                run_id, ReconciliationOutcome.FAILED, error=f"{type(exc).__name__}: {exc}", **_counts(report)
            )
        except Exception:
            log.exception("could not record the failed reconciliation of crawl %s", crawl_id)
        raise
    outcome = ReconciliationOutcome(report.outcome)
    await crawls.finish_reconciliation(run_id, outcome, **_counts(report))
    RECONCILIATIONS.labels(report.outcome).inc()
    log.info(
        "reconciled %s %s: %s, %d listed, %d recovered, %d failed pages found",
        kind,
        crawl_id,
        report.outcome,
        report.pages_listed,
        report.pages_recovered,
        report.pages_failed,
    )
    return report


def _counts(report: ReconcileReport) -> dict[str, Any]:
    return {
        "firecrawl_status": report.firecrawl_status,
        "firecrawl_total": report.firecrawl_total,
        "pages_listed": report.pages_listed,
        "pages_known": report.pages_known,
        "pages_recovered": report.pages_recovered,
        "pages_failed": report.pages_failed,
    }


async def _reconcile(
    report: ReconcileReport, *, source: CrawlResultsSource, crawls: CrawlRepository, queue: JobQueue
) -> None:
    crawl_id = report.crawl_id
    kind = crawl_kind(report.kind)
    delivery_id = reconcile_delivery_id(crawl_id)
    reported_failed = {_canonical(url) for url in await crawls.failed_page_urls(crawl_id)}
    seen: set[str] = set()
    complete = False
    async for results in source.iter_crawl_results(crawl_id, kind):
        report.firecrawl_status = results.status
        report.firecrawl_total = results.total
        report.pages_listed += len(results.documents)
        complete = not results.more
        pages, failures = read_documents(results.documents, crawl_id=crawl_id, source=RECONCILE_SOURCE)
        fresh_pages = []
        for page in pages:
            canonical = canonicalize_url(page.url)
            if canonical not in seen:  # Firecrawl's pages may overlap; one job per page is enough
                seen.add(canonical)
                fresh_pages.append((page, canonical))
        fresh_failures: list[tuple[str, str]] = []
        for failure in failures:
            if failure.url is None:  # nothing to match or to record it by; the webhook parser drops it too
                report.pages_failed += 1
                continue
            canonical = _canonical(failure.url)
            if canonical in seen:
                continue
            seen.add(canonical)
            if canonical in reported_failed:  # its failure was reported (by webhook, or an earlier run)
                report.pages_known += 1
            else:
                fresh_failures.append((failure.url, failure.error))
        known = await crawls.known_urls(
            crawl_id, [c for _, c in fresh_pages] + [_canonical(url) for url, _ in fresh_failures]
        )
        missing = [(page, canonical) for page, canonical in fresh_pages if canonical not in known]
        report.pages_known += len(fresh_pages) - len(missing)
        recovered: list[tuple[PageDocument, str]] = []
        for page, _ in missing:
            # Queued first, recorded second: a run that dies in between queues the same job ids again.
            enqueue = partial(
                queue.enqueue_index,
                page,
                delivery_id=delivery_id,
                meta={"crawl_id": crawl_id, "source": RECONCILE_SOURCE},
            )
            recovered.append((page, (await asyncio.to_thread(enqueue)).job_id))
        await record_received(crawls, crawl_id, recovered)
        report.pages_recovered += len(recovered)
        report.job_ids.extend(job_id for _, job_id in recovered)
        RECONCILED_PAGES.labels("recovered").inc(len(recovered))
        unreported = [(url, error) for url, error in fresh_failures if _canonical(url) not in known]
        report.pages_known += len(fresh_failures) - len(unreported)
        await crawls.record_failed_pages(crawl_id, f"{kind}.page", unreported)
        report.pages_failed += len(unreported)
        RECONCILED_PAGES.labels("failed").inc(len(unreported))
    finished = complete and report.firecrawl_status in FINISHED_STATUSES
    report.outcome = (ReconciliationOutcome.SUCCEEDED if finished else ReconciliationOutcome.INCOMPLETE).value


async def run_reconciliation(settings: Settings, crawl_id: str, kind: str = "crawl") -> ReconcileReport:
    """Reconcile a crawl now, in this process (an operator's command), with connections of its own.

    The pages it recovers are queued for the index workers as the reconcile job would queue them.
    """
    if not settings.firecrawl_url:
        raise ReconciliationUnavailableError(
            "crawl reconciliation reads the crawl's results from Firecrawl's API: set CRAWLDEX_FIRECRAWL_URL"
        )
    database = Database.connect(settings.effective_database_url, pool_size=settings.database_pool_size)
    queue = JobQueue(connect_redis(settings.redis_url), settings)
    try:
        async with FirecrawlScraper.from_settings(settings) as firecrawl:
            return await reconcile(
                crawl_id, crawl_kind(kind), source=firecrawl, crawls=CrawlRepository(database), queue=queue
            )
    finally:
        queue.connection.close()
        await database.dispose()
