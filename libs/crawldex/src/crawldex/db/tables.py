"""Table definitions. Every change here needs an Alembic revision in migrations/versions."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def stored_time(value: datetime) -> datetime:
    """``value`` as a `UTCDateTime` column stores it: in UTC; a naive time is refused (ValueError)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: crawldex stores timezone-aware UTC times only")
    return value.astimezone(UTC)


def stored_text(value: str) -> str:
    """``value`` as a `StoredText` column stores it: U+0000 as U+FFFD."""
    return value.replace("\x00", "\ufffd")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend: SQLite stores no zone and hands back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return stored_time(value) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StoredText(TypeDecorator[str]):
    """Text as PostgreSQL can store it: it refuses U+0000 in text, which JSON strings and URLs can carry, so
    that character is written (and looked up) as U+FFFD. ``StoredText(64)`` is a VARCHAR(64)."""

    impl: TypeEngine[str] | type[TypeEngine[str]] = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length  # part of the statement cache key (cache_ok)
        self.impl = String(length) if length is not None else Text()

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return stored_text(value) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DocumentStatus(enum.StrEnum):
    INDEXED = "indexed"
    EMPTY = "empty"  # the page had no text worth indexing; it holds no points
    GONE = "gone"


class Document(Base):
    """One indexed page, keyed by the uuid5 of its canonical URL."""

    __tablename__ = "documents"

    doc_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    canonical_url: Mapped[str] = mapped_column(StoredText(), unique=True)
    url: Mapped[str] = mapped_column(StoredText())
    title: Mapped[str | None] = mapped_column(StoredText())
    content_hash: Mapped[str] = mapped_column(StoredText(64))
    chunk_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(StoredText(16), index=True)
    crawl_id: Mapped[str | None] = mapped_column(StoredText(), index=True)
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When the content now indexed was received (webhook/API); an older delivery never overwrites it.
    source_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class CrawlEvent(Base):
    """A Firecrawl webhook delivery that did not become an index job: lifecycle events, failed pages."""

    __tablename__ = "crawl_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    crawl_id: Mapped[str | None] = mapped_column(StoredText(), index=True)
    event_type: Mapped[str] = mapped_column(StoredText(64))
    webhook_id: Mapped[str | None] = mapped_column(StoredText())
    success: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str | None] = mapped_column(StoredText())
    error: Mapped[str | None] = mapped_column(StoredText())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class OperationMetric(Base):
    """One timed operation: a pipeline stage, a whole job. Written in batches, off the job's path."""

    __tablename__ = "operation_metrics"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    operation_type: Mapped[str] = mapped_column(StoredText(32))
    operation_name: Mapped[str] = mapped_column(StoredText(64))
    duration_ms: Mapped[float] = mapped_column(Float)
    success: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(StoredText())
    document_url: Mapped[str | None] = mapped_column(StoredText())
    job_id: Mapped[str | None] = mapped_column(StoredText(128))
    crawl_id: Mapped[str | None] = mapped_column(StoredText(), index=True)


class ChangeEventStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for the rescrape worker
    FETCHING = "fetching"
    INDEXING = "indexing"  # fetched; waiting for (or in) the index worker
    INDEXED = "indexed"  # new content is searchable
    UNCHANGED = "unchanged"  # fetched content equals what the index holds
    GONE = "gone"  # the page answers 404/410 (or the sender says it was removed); its chunks are removed
    FAILED = "failed"  # out of retries; `error` says why


CHANGE_EVENT_OPEN = (ChangeEventStatus.QUEUED, ChangeEventStatus.FETCHING, ChangeEventStatus.INDEXING)


class ChangeEvent(Base):
    """A change reported for a page (changedetection.io, Firecrawl monitoring) and what became of it."""

    __tablename__ = "change_events"
    __table_args__ = (
        # One not-yet-fetched event per watch: a second notification joins it (it will fetch the newest page).
        Index(
            "uq_change_events_pending_watch",
            "watch_key",
            unique=True,
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    source: Mapped[str] = mapped_column(StoredText(32))
    watch_uuid: Mapped[str | None] = mapped_column(StoredText(128))
    watch_key: Mapped[str] = mapped_column(StoredText())  # watch uuid, else the canonical URL
    url: Mapped[str] = mapped_column(StoredText())
    canonical_url: Mapped[str] = mapped_column(StoredText(), index=True)
    detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[str] = mapped_column(StoredText(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    notifications: Mapped[int] = mapped_column(Integer, default=1)
    rescrape_job_id: Mapped[str | None] = mapped_column(StoredText(128))
    index_job_id: Mapped[str | None] = mapped_column(StoredText(128))
    error: Mapped[str | None] = mapped_column(StoredText())
    indexed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CrawlPageState(enum.StrEnum):
    PENDING = "pending"  # queued for indexing; its job has not ended yet
    INDEXED = "indexed"  # its index job finished (indexed, unchanged, empty or superseded)
    FAILED = "failed"  # its index job failed for good


class CrawlPage(Base):
    """One page of a Firecrawl crawl or batch scrape, as crawldex received it and what became of it.

    Written once per delivery by the webhook (or by reconciliation, for a page whose webhook never came)
    and once more by the index job when it ends; both writes are single upserts.
    """

    __tablename__ = "crawl_pages"

    crawl_id: Mapped[str] = mapped_column(StoredText(), primary_key=True)
    canonical_url: Mapped[str] = mapped_column(StoredText(), primary_key=True)
    url: Mapped[str] = mapped_column(StoredText())
    # The page's source: `crawl.page` / `batch_scrape.page` (webhook), `reconcile` (recovered), `api`.
    source: Mapped[str] = mapped_column(StoredText(64))
    job_id: Mapped[str] = mapped_column(StoredText(128))
    state: Mapped[str] = mapped_column(StoredText(16))
    error: Mapped[str | None] = mapped_column(StoredText())
    # When the delivery this row describes arrived; a row moves to a newer delivery, never to an older one.
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReconciliationOutcome(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every result Firecrawl holds was read, and the crawl had ended there
    INCOMPLETE = "incomplete"  # the crawl was still running at Firecrawl, or its listing stopped early
    FAILED = "failed"  # `error` says why; the job retries


class CrawlReconciliation(Base):
    """One run of a crawl's reconciliation: Firecrawl's results read back, lost pages queued."""

    __tablename__ = "crawl_reconciliations"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    crawl_id: Mapped[str] = mapped_column(StoredText(), index=True)
    kind: Mapped[str] = mapped_column(StoredText(16))
    job_id: Mapped[str | None] = mapped_column(StoredText(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(StoredText(16))
    firecrawl_status: Mapped[str | None] = mapped_column(StoredText(32))
    firecrawl_total: Mapped[int | None] = mapped_column(Integer)
    pages_listed: Mapped[int] = mapped_column(Integer)
    pages_known: Mapped[int] = mapped_column(Integer)
    pages_recovered: Mapped[int] = mapped_column(Integer)
    pages_failed: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(StoredText())
