"""The indexing pipeline: clean → chunk → (skip if unchanged) → embed → upsert → delete stale → record."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from crawldex.adapters.embedder import Embedder
from crawldex.adapters.qdrant import IndexedPoint, VectorStore
from crawldex.chunking import Chunk, Chunker
from crawldex.cleaning import clean_markdown, content_hash
from crawldex.db.repository import DocumentRecord, DocumentRepository
from crawldex.db.tables import DocumentStatus
from crawldex.keyword import BM25Encoder
from crawldex.logs import current_context
from crawldex.models import IndexOutcome, IndexStatus, PageDocument, utc_now
from crawldex.operations import DiscardOperations, OperationRecord, OperationSink
from crawldex.telemetry.metrics import (
    CHUNKS_INDEXED,
    DOCUMENTS_PROCESSED,
    INDEX_BATCH_PAGES,
    STAGE_DURATION,
)
from crawldex.telemetry.tracing import tracer
from crawldex.urls import canonicalize_url, document_id, domain_of, point_id


class Lease(Protocol):
    """A held lock's proof, checked before each write."""

    def check(self) -> None:
        """Raise `DependencyUnavailableError` unless the locks are surely still this holder's."""


class DocumentLock(Protocol):
    """Serialises writers of one document across processes (two jobs for one URL must not interleave)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[Lease]: ...

    def hold_many(self, keys: Sequence[str]) -> AbstractAsyncContextManager[Lease]: ...


class _ProcessLease:
    """An in-process lock is held until it is let go; it cannot lapse."""

    def check(self) -> None:
        return None


class LocalDocumentLock:
    """A per-process lock; enough when one process writes (tests, tools); workers use the Redis one."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def hold(self, key: str) -> AbstractAsyncContextManager[Lease]:
        return self.hold_many([key])

    @asynccontextmanager
    async def hold_many(self, keys: Sequence[str]) -> AsyncIterator[Lease]:
        async with AsyncExitStack() as stack:
            for key in sorted(set(keys)):  # in key order: overlapping batches cannot deadlock
                await stack.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
            yield _ProcessLease()


class _Timer:
    """Times the stages of one page or one batch of pages: a span, a histogram sample and an operation
    record each (naming the page and its crawl when there is one page, or one crawl)."""

    def __init__(self, operations: OperationSink, pages: Sequence[PageDocument]) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._operations = operations
        self._url = pages[0].url if len(pages) == 1 else None
        crawls = {page.crawl_id for page in pages}
        self._crawl_id = crawls.pop() if len(crawls) == 1 else None

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
                self.timings[name] = round(self.timings.get(name, 0.0) + seconds * 1000, 3)
                STAGE_DURATION.labels(name).observe(seconds)
                self._operations.record(
                    OperationRecord(
                        operation_type="stage",
                        operation_name=name,
                        duration_ms=seconds * 1000,
                        success=error is None,
                        error=error,
                        document_url=self._url,
                        job_id=current_context().get("job_id"),
                        crawl_id=self._crawl_id,
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
        return (await self.index_many([page], force=force))[0]

    async def index_many(self, pages: Sequence[PageDocument], *, force: bool = False) -> list[IndexOutcome]:
        """Index several pages as one batch, an outcome for each in their order: one lock pass, one
        document lookup, one embedder call, one upsert and one record write for all of them.

        Pages of one document are indexed one after another in their order (a later version wins), each in
        its own pass. It fails as a whole: a page may then be written in part, as by a failed `index`, and
        indexing it again (alone or in another batch) repairs it.
        """
        if not pages:
            return []
        timer = _Timer(self._operations, pages)
        async with timer.stage("clean"):
            prepared = [self._prepare(page) for page in pages]
        INDEX_BATCH_PAGES.observe(len(pages))
        outcomes: dict[int, _Outcome] = {}
        for positions in _passes([item.doc_id for item in prepared]):
            batch = [prepared[position] for position in positions]
            results = await self._index_pass(batch, timer, force=force)
            outcomes.update(zip(positions, results, strict=True))
        timings = timer.total()
        return [
            outcomes[position].report(prepared[position], timings, len(pages))
            for position in range(len(pages))
        ]

    def _prepare(self, page: PageDocument) -> _Prepared:
        canonical = canonicalize_url(page.url)
        cleaned = clean_markdown(page.markdown)
        digest = content_hash(
            cleaned,
            url=page.url,
            title=page.title,
            description=page.description,
            language=page.language,
            index_signature=self._index_signature,
        )
        return _Prepared(page, canonical, document_id(canonical), cleaned, digest)

    async def _index_pass(self, batch: list[_Prepared], timer: _Timer, *, force: bool) -> list[_Outcome]:
        """Index pages of distinct documents together."""
        async with self._lock.hold_many([str(item.doc_id) for item in batch]) as lease:
            existing = await self._documents.get_many([item.doc_id for item in batch])
            results: list[_Outcome | None] = []
            fresh: list[_Prepared] = []
            for item in batch:
                previous = existing.get(item.doc_id)
                skipped = await self._skip(item, previous, lease, force=force)
                results.append(skipped)
                if skipped is None:
                    fresh.append(item)
            if not fresh:
                return [result for result in results if result is not None]
            async with timer.stage("chunk"):
                chunked = await self._chunk_all([item.cleaned for item in fresh])
            texts = [chunk.text for chunks in chunked for chunk in chunks]
            async with timer.stage("embed"):
                vectors = iter(await self._embedder.embed_documents(texts))
            async with timer.stage("keyword"):
                sparse = iter([self._bm25.encode_document(text) for text in texts])
            now = self._clock()
            points: list[IndexedPoint] = []
            records: list[DocumentRecord] = []
            for item, chunks in zip(fresh, chunked, strict=True):
                common = self._payload(
                    item.page, item.canonical, str(item.doc_id), item.digest, len(chunks), now
                )
                points.extend(
                    IndexedPoint(
                        id=point_id(item.doc_id, chunk.index),
                        dense=next(vectors),
                        keyword=next(sparse),
                        payload={**common, "chunk_index": chunk.index, "text": chunk.text},
                    )
                    for chunk in chunks
                )
                records.append(self._record(item, len(chunks), now))
            # The chunks, then the stale tails in the same write: a reader never sees a document vanish.
            async with timer.stage("upsert"):
                lease.check()
                await self._store.write_chunks(
                    points, [(record.doc_id, record.chunk_count) for record in records], check=lease.check
                )
            async with timer.stage("record"):
                lease.check()
                await self._documents.save_many(records)
        written = iter(records)
        return [result if result is not None else _Outcome.of(next(written)) for result in results]

    async def _chunk_all(self, texts: list[str]) -> list[list[Chunk]]:
        """Chunk ``texts`` on up to one thread per CPU: the splitter lets go of the GIL, so a batch's pages
        are chunked side by side (on 2 cores in about half the time of one after another)."""
        threads = min(len(texts), os.cpu_count() or 1)

        def chunk_share(share: list[str]) -> list[list[Chunk]]:
            return [self._chunker.chunk(text) for text in share]

        shares = await asyncio.gather(
            *(asyncio.to_thread(chunk_share, texts[first::threads]) for first in range(threads))
        )
        return [shares[position % threads][position // threads] for position in range(len(texts))]

    async def _skip(
        self, item: _Prepared, existing: DocumentRecord | None, lease: Lease, *, force: bool
    ) -> _Outcome | None:
        """The outcome of a page with nothing to write (older than the index, or unchanged); else None."""
        if existing is None or force:
            return None
        # Older than what the index already reflects (newer content, or the page seen gone later).
        if existing.source_received_at > item.page.received_at:
            return _Outcome(IndexStatus.SUPERSEDED, existing.chunk_count)
        if existing.content_hash == item.digest and existing.status != DocumentStatus.GONE:
            if (
                existing.source_received_at == item.page.received_at
                and existing.indexed_at >= item.page.received_at
            ):
                # Written from this very delivery, after it came: by an earlier try of this job, which
                # failed later (recording its end, a worker killed after the write). Its outcome stands.
                return _Outcome.of(existing)
            lease.check()
            await self._touch(existing, item.page)
            return _Outcome(IndexStatus.UNCHANGED, existing.chunk_count)
        return None

    def _record(self, item: _Prepared, chunk_count: int, now: datetime) -> DocumentRecord:
        page = item.page
        return DocumentRecord(
            doc_id=item.doc_id,
            canonical_url=item.canonical,
            url=page.url,
            title=page.title,
            content_hash=item.digest,
            chunk_count=chunk_count,
            status=DocumentStatus.INDEXED if chunk_count else DocumentStatus.EMPTY,
            crawl_id=page.crawl_id,
            indexed_at=now,
            source_received_at=page.received_at,
        )

    async def remove(self, url: str, *, received_at: datetime | None = None) -> int:
        """The page is gone (404/410, or its sender says removed): delete its chunks, mark its row.

        Returns how many chunks it had. A later delivery of the page indexes it again.
        """
        canonical = canonicalize_url(url)
        doc_id = document_id(canonical)
        received = received_at or self._clock()
        timer = _Timer(self._operations, [PageDocument(url=url, markdown="")])
        async with self._lock.hold(str(doc_id)) as lease:
            existing = await self._documents.get(doc_id)
            if existing is not None and existing.source_received_at > received:
                return 0  # newer content arrived after the page was reported gone
            # The row first: should the delete then fail for good, the row says GONE and a later delivery
            # of the same content is indexed again; the other way round, an unchanged one would be skipped.
            async with timer.stage("record"):
                lease.check()
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
            async with timer.stage("delete"):
                lease.check()
                await self._store.delete_chunks_from(doc_id, 0)
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


@dataclass(frozen=True)
class _Prepared:
    """A page, cleaned, with the identity and content hash it is indexed under."""

    page: PageDocument
    canonical: str
    doc_id: uuid.UUID
    cleaned: str
    digest: str


@dataclass(frozen=True)
class _Outcome:
    status: IndexStatus
    chunk_count: int

    @classmethod
    def of(cls, record: DocumentRecord) -> _Outcome:
        return cls(IndexStatus.INDEXED if record.chunk_count else IndexStatus.EMPTY, record.chunk_count)

    def report(self, item: _Prepared, timings: dict[str, float], batch_pages: int) -> IndexOutcome:
        DOCUMENTS_PROCESSED.labels(self.status.value).inc()
        if self.status is IndexStatus.INDEXED:
            CHUNKS_INDEXED.inc(self.chunk_count)
        return IndexOutcome(
            url=item.page.url,
            canonical_url=item.canonical,
            doc_id=str(item.doc_id),
            status=self.status,
            chunk_count=self.chunk_count,
            content_hash=item.digest,
            timings_ms=timings,
            batch_pages=batch_pages,
        )


def _passes(doc_ids: Sequence[uuid.UUID]) -> list[list[int]]:
    """Positions split into passes of distinct documents: a document's n-th page goes in pass n."""
    passes: list[list[int]] = []
    seen: dict[uuid.UUID, int] = {}
    for position, doc_id in enumerate(doc_ids):
        number = seen.get(doc_id, -1) + 1
        seen[doc_id] = number
        if number == len(passes):
            passes.append([])
        passes[number].append(position)
    return passes
