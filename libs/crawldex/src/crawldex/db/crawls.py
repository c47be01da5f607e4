"""Bookkeeping of Firecrawl crawls: the pages each crawl delivered and what became of them, and the runs
of its reconciliation. Every write is one statement; the per-page ones are upserts, cheap on the webhook path.

A page row follows the newest delivery of its page: a webhook (or a reconciliation) records the delivery
`pending` with the id of the index job it queued, and that job records its end (`indexed` or `failed`).
The two writes may arrive in either order (a fast worker finishes before the webhook's write), so each is
an upsert that takes over a row only for a newer delivery, or for the same delivery's job reporting its end.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Text, and_, bindparam, cast, column, func, or_, select, update
from sqlalchemy.dialects.postgresql import JSON

from crawldex.db.database import Database
from crawldex.db.tables import (
    CrawlEvent,
    CrawlPage,
    CrawlPageState,
    CrawlReconciliation,
    ReconciliationOutcome,
    stored_text,
    stored_time,
)
from crawldex.models import utc_now

CrawlStatus = Literal["running", "completed", "cancelled", "failed"]
CrawlKindName = Literal["crawl", "batch_scrape"]
RECONCILE_SOURCE = "reconcile"
PAGE_EVENT_TYPES = ("crawl.page", "batch_scrape.page")
# Lifecycle events and the crawl status each one means; the latest one received decides.
LIFECYCLE_STATUS: dict[str, CrawlStatus] = {
    "crawl.started": "running",
    "batch_scrape.started": "running",
    "crawl.completed": "completed",
    "batch_scrape.completed": "completed",
    "crawl.cancelled": "cancelled",
    "crawl.failed": "failed",
    "batch_scrape.failed": "failed",
}
# Values bound per statement: PostgreSQL takes at most 32767 bind parameters in one.
_ROWS_PER_STATEMENT = 1000
# A page row's columns, as `_rows` names them.
_PAGE_COLUMNS = (
    "crawl_id",
    "canonical_url",
    "url",
    "source",
    "job_id",
    "state",
    "error",
    "received_at",
    "updated_at",
)
# The columns each delivery has its own value of: the rows of the PostgreSQL upsert (`_as_json`); the
# others are one value for every row of a write (its state, error and time).
_DELIVERY_COLUMNS = ("crawl_id", "canonical_url", "url", "source", "job_id", "received_at")


def reconcile_delivery_id(crawl_id: str) -> str:
    """The delivery id of everything a reconciliation of ``crawl_id`` queues or records."""
    return f"reconcile-{crawl_id}"


@dataclass(frozen=True)
class PageDelivery:
    """One delivery of one page of a crawl, and the index job that carries it."""

    canonical_url: str
    url: str
    source: str
    job_id: str
    received_at: datetime


@dataclass(frozen=True)
class ReconciliationRecord:
    id: int
    crawl_id: str
    kind: str
    job_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    firecrawl_status: str | None
    firecrawl_total: int | None
    pages_listed: int
    pages_known: int
    pages_recovered: int
    pages_failed: int
    error: str | None


@dataclass(frozen=True)
class CrawlSummary:
    """What crawldex knows of one crawl. ``pages_received + pages_recovered`` equals
    ``pages_indexed + pages_failed + pages_pending``."""

    crawl_id: str
    kind: CrawlKindName
    status: CrawlStatus
    pages_received: int
    pages_recovered: int
    pages_indexed: int
    pages_failed: int
    pages_pending: int
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    reconciliations: int
    last_reconciliation: ReconciliationRecord | None


def _reconciliation(row: CrawlReconciliation) -> ReconciliationRecord:
    return ReconciliationRecord(
        id=row.id,
        crawl_id=row.crawl_id,
        kind=row.kind,
        job_id=row.job_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=row.outcome,
        firecrawl_status=row.firecrawl_status,
        firecrawl_total=row.firecrawl_total,
        pages_listed=row.pages_listed,
        pages_known=row.pages_known,
        pages_recovered=row.pages_recovered,
        pages_failed=row.pages_failed,
        error=row.error,
    )


def _kind_of(event_type: str) -> CrawlKindName | None:
    if event_type.startswith("batch_scrape."):
        return "batch_scrape"
    if event_type.startswith("crawl."):
        return "crawl"
    return None


def _rows(
    crawl_id: str, pages: Sequence[PageDelivery], state: CrawlPageState, error: str | None, now: datetime
) -> list[dict[str, Any]]:
    latest: dict[str, PageDelivery] = {}
    for page in pages:  # the newest delivery of each page in one crawl's batch
        if page.canonical_url not in latest or page.received_at >= latest[page.canonical_url].received_at:
            latest[page.canonical_url] = page
    return [
        {
            "crawl_id": crawl_id,
            "canonical_url": page.canonical_url,
            "url": page.url,
            "source": page.source,
            "job_id": page.job_id,
            "state": state.value,
            "error": error,
            "received_at": page.received_at,
            "updated_at": now,
        }
        for page in latest.values()
    ]


def _takes_over(row: dict[str, Any], held: dict[str, Any]) -> bool:
    """Whether ``row`` replaces ``held``, a row of the same page: the rule of the upsert (`_newer_delivery_wins`)."""
    if row["job_id"] != held["job_id"]:
        return bool(row["received_at"] >= held["received_at"])
    return bool(row["state"] != CrawlPageState.PENDING.value)


def _one_row_per_page(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of each page's rows, the one that upserting them in turn would leave: one statement may upsert a row
    only once."""
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["crawl_id"], row["canonical_url"])
        held = kept.get(key)
        if held is None or _takes_over(row, held):
            kept[key] = row
    return list(kept.values())


def _newer_delivery_wins(insert: Any) -> Any:
    """``insert`` (of page rows) as an upsert that takes over an existing row only for a newer delivery carried
    by another job, or for the same delivery's job reporting its end."""
    new = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=[CrawlPage.crawl_id, CrawlPage.canonical_url],
        set_={name: new[name] for name in _PAGE_COLUMNS if name not in ("crawl_id", "canonical_url")},
        where=or_(
            and_(new.job_id != CrawlPage.job_id, new.received_at >= CrawlPage.received_at),
            and_(new.job_id == CrawlPage.job_id, new.state != CrawlPageState.PENDING.value),
        ),
    )


def _upsert_from_json(insert: Any) -> Any:
    """PostgreSQL's upsert of any number of page rows in one statement: the deliveries bound as one JSON array
    (`_as_json`, read by ``json_to_recordset``), the state, error and time shared by every row bound once.

    A statement a row (executemany) had SQLAlchemy process every row's parameters and the server plan and run
    an upsert a row; an array a column had SQLAlchemy and asyncpg check every element (~13 us a row either
    way); one JSON string is encoded by `json.dumps`, in C."""
    table = CrawlPage.__table__
    deliveries = (
        func.json_to_recordset(cast(bindparam("deliveries", type_=Text), JSON))
        .table_valued(*[column(name, table.c[name].type) for name in _DELIVERY_COLUMNS])
        .render_derived(with_types=True)
    )
    values = {name: deliveries.c[name] for name in _DELIVERY_COLUMNS}
    shared = {name: bindparam(name, type_=table.c[name].type) for name in _PAGE_COLUMNS if name not in values}
    columns = {**values, **shared}
    return _newer_delivery_wins(
        insert.from_select(list(_PAGE_COLUMNS), select(*[columns[name] for name in _PAGE_COLUMNS]))
    )


def _as_json(rows: Sequence[dict[str, Any]]) -> str:
    """The deliveries of ``rows`` as `_upsert_from_json` reads them, each value as its column would bind it
    (`stored_text`, `stored_time`): JSON passes no column type's own processing."""
    return json.dumps(
        [
            {
                "crawl_id": stored_text(row["crawl_id"]),
                "canonical_url": stored_text(row["canonical_url"]),
                "url": stored_text(row["url"]),
                "source": stored_text(row["source"]),
                "job_id": stored_text(row["job_id"]),
                "received_at": stored_time(row["received_at"]).isoformat(),
            }
            for row in rows
        ],
        ensure_ascii=False,  # escaping every character beyond ASCII cost a tenth of a write; sent as UTF-8
    )


class CrawlRepository:
    def __init__(self, database: Database) -> None:
        self._db = database
        # Built once: building an upsert costs several times more than running it (a webhook's page).
        insert = database.insert()(CrawlPage)
        self._upsert_page = _newer_delivery_wins(insert)
        self._upsert_pages = (
            _upsert_from_json(insert) if database.engine.dialect.name == "postgresql" else None
        )

    async def record_pages(
        self,
        crawl_id: str,
        pages: Sequence[PageDelivery],
        *,
        state: CrawlPageState = CrawlPageState.PENDING,
        error: str | None = None,
    ) -> None:
        """Record deliveries (``pending``: their jobs are queued) or the end of their jobs, in one upsert.

        A row takes the values of a delivery that is newer and carried by another job, or of its own job
        when that job reports an end; a replay of a delivery (same job) never sets an ended page back to
        pending, and an older delivery never overwrites a newer one.
        """
        await self.record_deliveries([(crawl_id, pages)], state=state, error=error)

    async def record_deliveries(
        self,
        deliveries: Sequence[tuple[str, Sequence[PageDelivery]]],
        *,
        state: CrawlPageState = CrawlPageState.PENDING,
        error: str | None = None,
    ) -> None:
        """`record_pages` for the pages of several crawls (or several deliveries of one), in one transaction."""
        now = utc_now()
        rows = [row for crawl_id, pages in deliveries for row in _rows(crawl_id, pages, state, error, now)]
        if not rows:
            return
        if self._upsert_pages is not None:  # PostgreSQL: every row in one statement
            async with self._db.statement() as conn:
                await conn.execute(
                    self._upsert_pages,
                    {
                        "deliveries": _as_json(_one_row_per_page(rows)),
                        "state": state.value,
                        "error": error,
                        "updated_at": now,
                    },
                )
            return
        # SQLite (the embedded mode): one statement per row, in one transaction.
        async with self._db.transaction() as conn:
            await conn.execute(self._upsert_page, rows)

    async def known_urls(self, crawl_id: str, canonical_urls: Collection[str]) -> set[str]:
        """Those of ``canonical_urls`` that crawl ``crawl_id`` has delivered (or reconciliation recovered)."""
        wanted = list(set(canonical_urls))
        known: set[str] = set()
        async with self._db.session() as session:
            for start in range(0, len(wanted), _ROWS_PER_STATEMENT):
                result = await session.execute(
                    select(CrawlPage.canonical_url).where(
                        CrawlPage.crawl_id == crawl_id,
                        CrawlPage.canonical_url.in_(wanted[start : start + _ROWS_PER_STATEMENT]),
                    )
                )
                known.update(result.scalars())
        return known

    async def failed_page_urls(self, crawl_id: str) -> list[str]:
        """The URLs of the crawl's pages reported failed (as sent: not canonicalised)."""
        async with self._db.session() as session:
            result = await session.execute(
                select(CrawlEvent.url).where(
                    CrawlEvent.crawl_id == crawl_id,
                    CrawlEvent.event_type.in_(PAGE_EVENT_TYPES),
                    CrawlEvent.success.is_(False),
                    CrawlEvent.url.is_not(None),
                )
            )
            return [url for url in result.scalars() if url]

    async def record_failed_pages(
        self, crawl_id: str, event_type: str, failures: Sequence[tuple[str | None, str]]
    ) -> None:
        """Failed pages that reconciliation found in Firecrawl's results (their webhooks never came)."""
        if not failures:
            return
        async with self._db.session() as session:
            session.add_all(
                CrawlEvent(
                    crawl_id=crawl_id,
                    event_type=event_type,
                    webhook_id=reconcile_delivery_id(crawl_id),
                    success=False,
                    url=url,
                    error=error,
                )
                for url, error in failures
            )

    async def start_reconciliation(self, crawl_id: str, kind: str, job_id: str | None) -> int:
        async with self._db.session() as session:
            row = CrawlReconciliation(
                crawl_id=crawl_id,
                kind=kind,
                job_id=job_id,
                started_at=utc_now(),
                outcome=ReconciliationOutcome.RUNNING.value,
                pages_listed=0,
                pages_known=0,
                pages_recovered=0,
                pages_failed=0,
            )
            session.add(row)
            await session.flush()
            return row.id

    async def finish_reconciliation(
        self,
        run_id: int,
        outcome: ReconciliationOutcome,
        *,
        firecrawl_status: str | None = None,
        firecrawl_total: int | None = None,
        pages_listed: int = 0,
        pages_known: int = 0,
        pages_recovered: int = 0,
        pages_failed: int = 0,
        error: str | None = None,
    ) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(CrawlReconciliation)
                .where(CrawlReconciliation.id == run_id)
                .values(
                    finished_at=utc_now(),
                    outcome=outcome.value,
                    firecrawl_status=firecrawl_status[:32] if firecrawl_status else None,
                    firecrawl_total=firecrawl_total,
                    pages_listed=pages_listed,
                    pages_known=pages_known,
                    pages_recovered=pages_recovered,
                    pages_failed=pages_failed,
                    error=error[:4000] if error else None,
                )
            )

    async def summary(self, crawl_id: str) -> CrawlSummary | None:
        """The crawl's status and page counts; None if crawldex has never heard of it."""
        recovered = CrawlPage.source == RECONCILE_SOURCE
        failed_page = and_(CrawlEvent.event_type.in_(PAGE_EVENT_TYPES), CrawlEvent.success.is_(False))
        from_reconcile = func.coalesce(CrawlEvent.webhook_id, "") == reconcile_delivery_id(crawl_id)
        async with self._db.session() as session:
            page_groups = (
                await session.execute(
                    select(
                        recovered,
                        CrawlPage.state,
                        func.max(CrawlPage.source),
                        func.count(),
                        func.min(CrawlPage.received_at),
                        func.max(CrawlPage.received_at),
                    )
                    .where(CrawlPage.crawl_id == crawl_id)
                    .group_by(recovered, CrawlPage.state)
                )
            ).all()
            events = (
                await session.execute(
                    select(
                        func.count(),
                        func.count().filter(and_(failed_page, ~from_reconcile)),
                        func.count().filter(and_(failed_page, from_reconcile)),
                        func.min(CrawlEvent.received_at),
                        func.max(CrawlEvent.received_at),
                        func.max(CrawlEvent.event_type),
                    ).where(CrawlEvent.crawl_id == crawl_id)
                )
            ).one()
            lifecycle = (
                await session.execute(
                    select(CrawlEvent.event_type)
                    .where(CrawlEvent.crawl_id == crawl_id, CrawlEvent.event_type.in_(list(LIFECYCLE_STATUS)))
                    .order_by(CrawlEvent.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            runs = (
                await session.execute(
                    select(func.count())
                    .select_from(CrawlReconciliation)
                    .where(CrawlReconciliation.crawl_id == crawl_id)
                )
            ).scalar_one()
            last_run = (
                await session.execute(
                    select(CrawlReconciliation)
                    .where(CrawlReconciliation.crawl_id == crawl_id)
                    .order_by(CrawlReconciliation.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        event_count, failed_received, failed_recovered, first_event, last_event, event_type = events
        if not page_groups and not event_count and last_run is None:
            return None
        counts = {"received": failed_received, "recovered": failed_recovered, "indexed": 0, "pending": 0}
        failed = failed_received + failed_recovered
        seen = [t for t in (first_event, last_event) if t is not None]
        kinds = [_kind_of(lifecycle or ""), _kind_of(event_type or "")]
        for is_recovered, state, source, count, earliest, latest in page_groups:
            counts["recovered" if is_recovered else "received"] += count
            if state == CrawlPageState.INDEXED:
                counts["indexed"] += count
            elif state == CrawlPageState.FAILED:
                failed += count
            else:
                counts["pending"] += count
            seen.extend(t for t in (earliest, latest) if t is not None)
            kinds.append(_kind_of(source or ""))
        last = _reconciliation(last_run) if last_run is not None else None
        kind = next((k for k in kinds if k), _kind_of(f"{last.kind}.") if last is not None else None)
        return CrawlSummary(
            crawl_id=crawl_id,
            kind=kind or "crawl",
            status=LIFECYCLE_STATUS[lifecycle] if lifecycle is not None else _status_from_firecrawl(last),
            pages_received=counts["received"],
            pages_recovered=counts["recovered"],
            pages_indexed=counts["indexed"],
            pages_failed=failed,
            pages_pending=counts["pending"],
            first_seen_at=min(seen) if seen else None,
            last_seen_at=max(seen) if seen else None,
            reconciliations=int(runs),
            last_reconciliation=last,
        )


def _status_from_firecrawl(last: ReconciliationRecord | None) -> CrawlStatus:
    """No lifecycle event arrived (their webhooks were lost too): what Firecrawl said, else running."""
    status = last.firecrawl_status if last is not None else None
    if status == "completed":
        return "completed"
    if status == "cancelled":
        return "cancelled"
    if status == "failed":
        return "failed"
    return "running"
