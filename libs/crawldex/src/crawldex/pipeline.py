"""The indexing pipeline: clean → chunk → (skip if unchanged) → embed → upsert → delete stale → record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

from crawldex.adapters.embedder import Embedder
from crawldex.adapters.qdrant import IndexedPoint, VectorStore
from crawldex.chunking import Chunker
from crawldex.cleaning import clean_markdown, content_hash
from crawldex.db.repository import DocumentRecord, DocumentRepository
from crawldex.db.tables import DocumentStatus
from crawldex.keyword import BM25Encoder
from crawldex.logs import current_context
from crawldex.models import IndexOutcome, IndexStatus, PageDocument, utc_now
from crawldex.operations import DiscardOperations, OperationRecord, OperationSink
from crawldex.telemetry.metrics import CHUNKS_INDEXED, DOCUMENTS_PROCESSED, STAGE_DURATION
from crawldex.telemetry.tracing import tracer
from crawldex.urls import canonicalize_url, document_id, domain_of, point_id


class DocumentLock(Protocol):
    """Serialises writers of one document across processes (two jobs for one URL must not interleave)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


class LocalDocumentLock:
    """A per-process lock; enough when one process writes (tests, tools); workers use the Redis one."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield


class _Timer:
    """Times the stages of one page: a span, a histogram sample and an operation record each."""

    def __init__(self, operations: OperationSink, page: PageDocument) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._operations = operations
        self._page = page

    @asynccontextmanager
    async def stage(self, name: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        error: str | None = None
        with tracer().start_as_current_span(f"stage {name}", attributes={"crawldex.stage": name}):
            try:
                yield
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"[:2000]
                raise
            finally:
                seconds = time.perf_counter() - started
                self.timings[name] = round(seconds * 1000, 3)
                STAGE_DURATION.labels(name).observe(seconds)
                self._operations.record(
                    OperationRecord(
                        operation_type="stage",
                        operation_name=name,
                        duration_ms=seconds * 1000,
                        success=error is None,
                        error=error,
                        document_url=self._page.url,
                        job_id=current_context().get("job_id"),
                        crawl_id=self._page.crawl_id,
                    )
                )

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": round((time.perf_counter() - self._start) * 1000, 3)}


def url_prefixes(canonical_url: str) -> list[str]:
    """Every path-segment prefix of a URL, with and without its trailing slash (for url_prefix filters)."""
    scheme_host, _, rest = canonical_url.partition("://")
    host, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    base = f"{scheme_host}://{host}/"
    prefixes = [base]
    current = base
    for segment in [s for s in path.split("/") if s]:
        current = f"{current}{segment}"
        prefixes.append(current)
        current = f"{current}/"
        prefixes.append(current)
    full = canonical_url
    if full not in prefixes:
        prefixes.append(full)
    return prefixes


class IndexingPipeline:
    def __init__(
        self,
        *,
        chunker: Chunker,
        embedder: Embedder,
        store: VectorStore,
        documents: DocumentRepository,
        bm25: BM25Encoder,
        lock: DocumentLock,
        index_signature: str = "",
        operations: OperationSink | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._chunker = chunker
        self._embedder = embedder
        self._store = store
        self._documents = documents
        self._bm25 = bm25
        self._lock = lock
        self._clock = clock
        self._index_signature = index_signature
        self._operations: OperationSink = operations or DiscardOperations()

    async def index(self, page: PageDocument, *, force: bool = False) -> IndexOutcome:
        """Index ``page``; ``force`` re-embeds even unchanged content (diagnostics)."""
        timer = _Timer(self._operations, page)
        canonical = canonicalize_url(page.url)
        doc_id = document_id(canonical)
        async with timer.stage("clean"):
            cleaned = clean_markdown(page.markdown)
            digest = content_hash(
                cleaned,
                url=page.url,
                title=page.title,
                description=page.description,
                language=page.language,
                index_signature=self._index_signature,
            )

        def outcome(status: IndexStatus, chunk_count: int) -> IndexOutcome:
            DOCUMENTS_PROCESSED.labels(status.value).inc()
            if status is IndexStatus.INDEXED:
                CHUNKS_INDEXED.inc(chunk_count)
            return IndexOutcome(
                url=page.url,
                canonical_url=canonical,
                doc_id=str(doc_id),
                status=status,
                chunk_count=chunk_count,
                content_hash=digest,
                timings_ms=timer.total(),
            )

        async with self._lock.hold(str(doc_id)):
            existing = await self._documents.get(doc_id)
            # Older than what the index already reflects (newer content, or the page seen gone later).
            if existing is not None and existing.source_received_at > page.received_at and not force:
                return outcome(IndexStatus.SUPERSEDED, existing.chunk_count)
            if (
                existing is not None
                and existing.content_hash == digest
                and existing.status != DocumentStatus.GONE
                and not force
            ):
                await self._touch(existing, page)
                return outcome(IndexStatus.UNCHANGED, existing.chunk_count)

            async with timer.stage("chunk"):
                chunks = await asyncio.to_thread(self._chunker.chunk, cleaned)
            texts = [chunk.text for chunk in chunks]
            async with timer.stage("embed"):
                vectors = await self._embedder.embed_documents(texts)
            async with timer.stage("keyword"):
                sparse = [self._bm25.encode_document(text) for text in texts]
            now = self._clock()
            common = self._payload(page, canonical, str(doc_id), digest, len(chunks), now)
            points = [
                IndexedPoint(
                    id=point_id(doc_id, chunk.index),
                    dense=vector,
                    keyword=keyword,
                    payload={**common, "chunk_index": chunk.index, "text": chunk.text},
                )
                for chunk, vector, keyword in zip(chunks, vectors, sparse, strict=True)
            ]
            # Upsert first, then drop the tail: a reader never sees the document vanish.
            async with timer.stage("upsert"):
                await self._store.upsert(points)
            async with timer.stage("delete"):
                await self._store.delete_chunks_from(doc_id, len(points))
            status = DocumentStatus.INDEXED if points else DocumentStatus.EMPTY
            async with timer.stage("record"):
                await self._documents.save(
                    DocumentRecord(
                        doc_id=doc_id,
                        canonical_url=canonical,
                        url=page.url,
                        title=page.title,
                        content_hash=digest,
                        chunk_count=len(points),
                        status=status,
                        crawl_id=page.crawl_id,
                        indexed_at=now,
                        source_received_at=page.received_at,
                    )
                )
        return outcome(IndexStatus.INDEXED if points else IndexStatus.EMPTY, len(points))

    async def remove(self, url: str, *, received_at: datetime | None = None) -> int:
        """The page is gone (404/410, or its sender says removed): delete its chunks, mark its row.

        Returns how many chunks it had. A later delivery of the page indexes it again.
        """
        canonical = canonicalize_url(url)
        doc_id = document_id(canonical)
        received = received_at or self._clock()
        timer = _Timer(self._operations, PageDocument(url=url, markdown=""))
        async with self._lock.hold(str(doc_id)):
            existing = await self._documents.get(doc_id)
            if existing is not None and existing.source_received_at > received:
                return 0  # newer content arrived after the page was reported gone
            async with timer.stage("delete"):
                await self._store.delete_chunks_from(doc_id, 0)
            async with timer.stage("record"):
                await self._documents.save(
                    DocumentRecord(
                        doc_id=doc_id,
                        canonical_url=canonical,
                        url=url,
                        title=existing.title if existing else None,
                        content_hash="",
                        chunk_count=0,
                        status=DocumentStatus.GONE,
                        crawl_id=existing.crawl_id if existing else None,
                        indexed_at=self._clock(),
                        source_received_at=received,
                    )
                )
        DOCUMENTS_PROCESSED.labels("gone").inc()
        return existing.chunk_count if existing is not None else 0

    async def _touch(self, existing: DocumentRecord, page: PageDocument) -> None:
        """Same content again: keep the vectors, move the crawl id and receipt time forward."""
        if page.crawl_id and page.crawl_id != existing.crawl_id and existing.chunk_count:
            await self._store.set_document_payload(existing.doc_id, {"crawl_id": page.crawl_id})
        await self._documents.save(
            DocumentRecord(
                **{
                    **existing.__dict__,
                    "crawl_id": page.crawl_id or existing.crawl_id,
                    "source_received_at": page.received_at,
                }
            )
        )

    @staticmethod
    def _payload(
        page: PageDocument, canonical: str, doc_id: str, digest: str, chunk_count: int, now: datetime
    ) -> dict[str, Any]:
        language = page.language.strip().lower().replace("_", "-") if page.language else None
        return {
            "url": page.url,
            "canonical_url": canonical,
            "doc_id": doc_id,
            "domain": domain_of(canonical),
            "url_prefixes": url_prefixes(canonical),
            "title": page.title,
            "description": page.description,
            "language": language,
            "language_primary": language.split("-", 1)[0] if language else None,
            "crawl_id": page.crawl_id,
            "source": page.source,
            "content_hash": digest,
            "chunk_count": chunk_count,
            "indexed_at": now.isoformat(),
            "indexed_at_ts": now.timestamp(),
        }
