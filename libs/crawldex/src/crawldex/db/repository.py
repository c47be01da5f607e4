"""Reads and writes of the documents and crawl_events tables, each its own short transaction (or one statement)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, case, func, select

from crawldex.db.database import Database
from crawldex.db.tables import CrawlEvent, Document, OperationMetric


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: uuid.UUID
    canonical_url: str
    url: str
    title: str | None
    content_hash: str
    chunk_count: int
    status: str
    crawl_id: str | None
    indexed_at: datetime
    source_received_at: datetime


def _record(row: Document) -> DocumentRecord:
    return DocumentRecord(
        doc_id=row.doc_id,
        canonical_url=row.canonical_url,
        url=row.url,
        title=row.title,
        content_hash=row.content_hash,
        chunk_count=row.chunk_count,
        status=row.status,
        crawl_id=row.crawl_id,
        indexed_at=row.indexed_at,
        source_received_at=row.source_received_at,
    )


_DOCUMENT_FIELDS = (
    "doc_id",
    "canonical_url",
    "url",
    "title",
    "content_hash",
    "chunk_count",
    "status",
    "crawl_id",
    "indexed_at",
    "source_received_at",
)


class DocumentRepository:
    """Each index job reads and writes its document once: both are one statement without a transaction
    around it (see `Database.statement`), built once (building one costs more than running it)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        columns = [Document.__table__.c[name] for name in _DOCUMENT_FIELDS]
        self._select = select(*columns).where(Document.doc_id == bindparam("id"))
        self._select_many = select(*columns).where(Document.doc_id.in_(bindparam("ids", expanding=True)))
        insert = database.insert()(Document)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[Document.doc_id],
            set_={
                **{name: insert.excluded[name] for name in _DOCUMENT_FIELDS if name != "doc_id"},
                "updated_at": func.now(),
            },
        )

    async def get(self, doc_id: uuid.UUID) -> DocumentRecord | None:
        async with self._db.statement() as conn:
            row = (await conn.execute(self._select, {"id": doc_id})).first()
        return DocumentRecord(**row._mapping) if row is not None else None

    async def get_many(self, doc_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, DocumentRecord]:
        """The rows of those of ``doc_ids`` that exist, in one statement."""
        if len(doc_ids) == 1:
            (doc_id,) = doc_ids
            record = await self.get(doc_id)
            return {doc_id: record} if record is not None else {}
        async with self._db.statement() as conn:
            rows = (await conn.execute(self._select_many, {"ids": list(doc_ids)})).all()
        return {row.doc_id: DocumentRecord(**row._mapping) for row in rows}

    async def save(self, record: DocumentRecord) -> None:
        """Insert or replace the document's row in one statement (ON CONFLICT), atomic as it is."""
        async with self._db.statement() as conn:
            await conn.execute(self._upsert, self._values(record))

    async def save_many(self, records: Collection[DocumentRecord]) -> None:
        """`save` for several documents in one transaction: one commit (one flush to disk) for all."""
        if len(records) <= 1:
            for record in records:
                await self.save(record)
            return
        async with self._db.many() as conn:
            await conn.execute(self._upsert, [self._values(record) for record in records])

    @staticmethod
    def _values(record: DocumentRecord) -> dict[str, object]:
        return {name: getattr(record, name) for name in _DOCUMENT_FIELDS}

    async def count(self, *, statuses: Collection[str] | None = None) -> int:
        conditions = [Document.status.in_(list(statuses))] if statuses is not None else []
        async with self._db.session() as session:
            return int(
                (
                    await session.execute(select(func.count()).select_from(Document).where(*conditions))
                ).scalar_one()
            )

    async def list_after(
        self, after_canonical_url: str | None, *, limit: int, statuses: Collection[str] | None = None
    ) -> list[DocumentRecord]:
        """The next ``limit`` documents in canonical-URL order after ``after_canonical_url`` (keyset paging:
        rows written while a caller walks the table neither repeat nor shift its pages)."""
        conditions: list[ColumnElement[bool]] = []
        if after_canonical_url is not None:
            conditions.append(Document.canonical_url > after_canonical_url)
        if statuses is not None:
            conditions.append(Document.status.in_(list(statuses)))
        async with self._db.session() as session:
            rows = await session.execute(
                select(Document).where(*conditions).order_by(Document.canonical_url).limit(limit)
            )
            return [_record(row) for row in rows.scalars()]


class CrawlEventRepository:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def record(
        self,
        *,
        crawl_id: str | None,
        event_type: str,
        webhook_id: str | None,
        success: bool,
        failures: Sequence[tuple[str | None, str | None]] = (),
        error: str | None = None,
    ) -> None:
        """One row per failed page (its URL and its own error), or one row for the event when none failed
        (``error``: the event's own, if it has one)."""
        async with self._db.session() as session:
            session.add_all(
                CrawlEvent(
                    crawl_id=crawl_id,
                    event_type=event_type,
                    webhook_id=webhook_id,
                    success=success,
                    url=url,
                    error=page_error,
                )
                for url, page_error in (failures or [(None, error)])
            )

    async def list_for_crawl(self, crawl_id: str) -> list[CrawlEvent]:
        async with self._db.session() as session:
            rows = await session.execute(
                select(CrawlEvent).where(CrawlEvent.crawl_id == crawl_id).order_by(CrawlEvent.id)
            )
            return list(rows.scalars())


@dataclass(frozen=True)
class OperationSummary:
    operation_type: str
    operation_name: str
    count: int
    failures: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclass(frozen=True)
class OperationQuery:
    since: datetime
    operation_type: str | None = None
    operation_name: str | None = None
    success: bool | None = None
    crawl_id: str | None = None


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not sorted_values:
        return 0.0
    position = fraction * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class OperationMetricsRepository:
    def __init__(self, database: Database) -> None:
        self._db = database

    @staticmethod
    def _where(query: OperationQuery) -> list[ColumnElement[bool]]:
        conditions = [OperationMetric.timestamp >= query.since]
        if query.operation_type is not None:
            conditions.append(OperationMetric.operation_type == query.operation_type)
        if query.operation_name is not None:
            conditions.append(OperationMetric.operation_name == query.operation_name)
        if query.success is not None:
            conditions.append(OperationMetric.success.is_(query.success))
        if query.crawl_id is not None:
            conditions.append(OperationMetric.crawl_id == query.crawl_id)
        return conditions

    async def rows(
        self, query: OperationQuery, *, limit: int, offset: int
    ) -> tuple[list[OperationMetric], int]:
        where = self._where(query)
        async with self._db.session() as session:
            total = (
                await session.execute(select(func.count()).select_from(OperationMetric).where(*where))
            ).scalar_one()
            result = await session.execute(
                select(OperationMetric)
                .where(*where)
                .order_by(OperationMetric.timestamp.desc(), OperationMetric.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return list(result.scalars()), int(total)

    async def summary(self, query: OperationQuery) -> list[OperationSummary]:
        """Count, failures and latency percentiles per (type, name) over every matching row."""
        where = self._where(query)
        async with self._db.session() as session:
            if self._db.engine.dialect.name == "postgresql":
                p50 = func.percentile_cont(0.5).within_group(OperationMetric.duration_ms)
                p95 = func.percentile_cont(0.95).within_group(OperationMetric.duration_ms)
                result = await session.execute(
                    select(
                        OperationMetric.operation_type,
                        OperationMetric.operation_name,
                        func.count(),
                        func.sum(case((OperationMetric.success.is_(False), 1), else_=0)),
                        func.avg(OperationMetric.duration_ms),
                        p50,
                        p95,
                        func.max(OperationMetric.duration_ms),
                    )
                    .where(*where)
                    .group_by(OperationMetric.operation_type, OperationMetric.operation_name)
                    .order_by(OperationMetric.operation_type, OperationMetric.operation_name)
                )
                return [
                    OperationSummary(t, n, int(c), int(f or 0), float(a), float(m50), float(m95), float(mx))
                    for t, n, c, f, a, m50, m95, mx in result.all()
                ]
            # SQLite (embedded mode) has no percentile_cont: compute from the durations.
            result = await session.execute(
                select(
                    OperationMetric.operation_type,
                    OperationMetric.operation_name,
                    OperationMetric.duration_ms,
                    OperationMetric.success,
                ).where(*where)
            )
            groups: dict[tuple[str, str], list[tuple[float, bool]]] = {}
            for t, n, duration, ok in result.all():
                groups.setdefault((t, n), []).append((float(duration), bool(ok)))
        summaries = []
        for (t, n), items in sorted(groups.items()):
            durations = sorted(d for d, _ in items)
            summaries.append(
                OperationSummary(
                    t,
                    n,
                    len(items),
                    sum(1 for _, ok in items if not ok),
                    sum(durations) / len(durations),
                    _percentile(durations, 0.5),
                    _percentile(durations, 0.95),
                    durations[-1],
                )
            )
        return summaries
