"""Reads and writes of the documents and crawl_events tables, each in its own short transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from crawldex.db.database import Database
from crawldex.db.tables import CrawlEvent, Document


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


class DocumentRepository:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def get(self, doc_id: uuid.UUID) -> DocumentRecord | None:
        async with self._db.session() as session:
            row = await session.get(Document, doc_id)
            return _record(row) if row is not None else None

    async def save(self, record: DocumentRecord) -> None:
        async with self._db.session() as session:
            row = await session.get(Document, record.doc_id, with_for_update=True)
            if row is None:
                row = Document(doc_id=record.doc_id)
                session.add(row)
            row.canonical_url = record.canonical_url
            row.url = record.url
            row.title = record.title
            row.content_hash = record.content_hash
            row.chunk_count = record.chunk_count
            row.status = record.status
            row.crawl_id = record.crawl_id
            row.indexed_at = record.indexed_at
            row.source_received_at = record.source_received_at
            row.updated_at = func.now()

    async def count(self) -> int:
        async with self._db.session() as session:
            return int((await session.execute(select(func.count()).select_from(Document))).scalar_one())


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
        urls: list[str | None],
        error: str | None,
    ) -> None:
        async with self._db.session() as session:
            session.add_all(
                CrawlEvent(
                    crawl_id=crawl_id,
                    event_type=event_type,
                    webhook_id=webhook_id,
                    success=success,
                    url=url,
                    error=error,
                )
                for url in (urls or [None])
            )

    async def list_for_crawl(self, crawl_id: str) -> list[CrawlEvent]:
        async with self._db.session() as session:
            rows = await session.execute(
                select(CrawlEvent).where(CrawlEvent.crawl_id == crawl_id).order_by(CrawlEvent.id)
            )
            return list(rows.scalars())
