"""The indexing pipeline on real PostgreSQL, Redis, the real model and the embedded Qdrant."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from crawldex.adapters.embedder import EmbedderInfo, Vector
from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.redis_lock import KEY_PREFIX, LockLostError, RedisDocumentLock
from crawldex.adapters.tei import DIMENSION_PROBE_TEXT, TEIEmbedder
from crawldex.config import Settings
from crawldex.errors import DependencyUnavailableError, EmbedderError
from crawldex.models import IndexStatus, PageDocument, utc_now
from crawldex.pipeline import IndexingPipeline, LocalDocumentLock
from crawldex.search import SearchMode, SearchRequest
from crawldex.services import Services
from crawldex.urls import canonicalize_url, document_id
from tests.conftest import fixture_json

URL = "https://docs.example.com/guides/queues"


def _page(markdown: str, **kwargs: object) -> PageDocument:
    return PageDocument(url=kwargs.pop("url", URL), markdown=markdown, title="Queues", **kwargs)


def _long_markdown(topic: str, sections: int) -> str:
    body = "\n\n".join(
        f"## {topic} part {i}\n\n"
        + " ".join(f"{topic} sentence {i}.{j} explains how the system behaves." for j in range(15))
        for i in range(sections)
    )
    return f"# {topic}\n\n{body}"


async def _points(services: Services, url: str = URL) -> dict[str, dict[str, object]]:
    doc_id = document_id(canonicalize_url(url))
    client = services.store._client
    records, _ = client.scroll(services.store.collection, limit=10_000, with_payload=True, with_vectors=False)
    return {
        str(r.id): dict(r.payload or {}) for r in records if (r.payload or {}).get("doc_id") == str(doc_id)
    }


async def test_index_then_replay_leaves_the_same_points(services: Services) -> None:
    first = await services.pipeline.index(_page(_long_markdown("Redis", 8), crawl_id="c1"))
    assert first.status is IndexStatus.INDEXED
    assert first.chunk_count > 1
    assert set(first.timings_ms) >= {"clean", "chunk", "embed", "upsert", "total"}
    before = await _points(services)
    assert len(before) == first.chunk_count == await services.store.count()

    for _ in range(3):
        again = await services.pipeline.index(_page(_long_markdown("Redis", 8), crawl_id="c1"))
        assert again.status is IndexStatus.UNCHANGED
        assert "embed" not in again.timings_ms
    assert await _points(services) == before

    record = await services.documents.get(document_id(canonicalize_url(URL)))
    assert record is not None
    assert (record.chunk_count, record.status, record.content_hash) == (
        first.chunk_count,
        "indexed",
        first.content_hash,
    )


async def test_changed_text_replaces_every_chunk(services: Services) -> None:
    old = await services.pipeline.index(_page(_long_markdown("Zebra", 12)))
    new = await services.pipeline.index(_page("# Queues\n\nPenguins now explain the queue semantics."))
    assert old.chunk_count > new.chunk_count == 1
    points = await _points(services)
    assert len(points) == 1 == await services.store.count()
    assert "Penguins" in str(next(iter(points.values()))["text"])

    for mode in SearchMode:
        stale = await services.search.search(SearchRequest(query="Zebra sentence explains", mode=mode))
        assert all("Zebra" not in r.text for r in stale.results), mode
        fresh = await services.search.search(SearchRequest(query="penguins queue semantics", mode=mode))
        assert [r.url for r in fresh.results] == [URL], mode


async def test_more_chunks_after_fewer(services: Services) -> None:
    await services.pipeline.index(_page("short page about otters"))
    grown = await services.pipeline.index(_page(_long_markdown("Otter", 10)))
    assert len(await _points(services)) == grown.chunk_count > 1
    indices = sorted(int(p["chunk_index"]) for p in (await _points(services)).values())  # type: ignore[call-overload]
    assert indices == list(range(grown.chunk_count))


async def test_only_crawl_id_changed_keeps_vectors(services: Services) -> None:
    await services.pipeline.index(_page("stable text about lighthouses", crawl_id="crawl-a"))
    outcome = await services.pipeline.index(_page("stable text about lighthouses", crawl_id="crawl-b"))
    assert outcome.status is IndexStatus.UNCHANGED
    assert {p["crawl_id"] for p in (await _points(services)).values()} == {"crawl-b"}


async def test_empty_page_removes_old_points(services: Services) -> None:
    await services.pipeline.index(_page(_long_markdown("Walrus", 3)))
    outcome = await services.pipeline.index(_page("  \n\n  "))
    assert outcome.status is IndexStatus.EMPTY
    assert outcome.chunk_count == 0
    assert await _points(services) == {}
    record = await services.documents.get(document_id(canonicalize_url(URL)))
    assert record is not None
    assert record.status == "empty"


async def test_older_delivery_never_overwrites_newer(services: Services) -> None:
    now = utc_now()
    await services.pipeline.index(_page("the newer text about herons", received_at=now))
    late = await services.pipeline.index(
        _page("the older text about storks", received_at=now - timedelta(minutes=5))
    )
    assert late.status is IndexStatus.SUPERSEDED
    texts = [str(p["text"]) for p in (await _points(services)).values()]
    assert texts == ["the newer text about herons"]


async def test_url_variants_are_one_document(services: Services) -> None:
    await services.pipeline.index(_page("first", url="HTTPS://Docs.Example.com/guides/queues#intro"))
    outcome = await services.pipeline.index(
        _page("second text", url="https://docs.example.com:443/guides/queues")
    )
    assert outcome.status is IndexStatus.INDEXED
    assert len(await _points(services)) == 1


async def test_embedder_failure_writes_nothing(settings: Settings, services: Services) -> None:
    """TEI answering 424 (its documented backend error) fails the job; the index stays as it was."""
    await services.pipeline.index(_page("original text about puffins"))
    before = await _points(services)
    info = fixture_json("tei", "info.json")
    dimension = services.embedder.info.dimension

    def tei(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=info)
        inputs = json.loads(request.content)["inputs"]
        if inputs in (DIMENSION_PROBE_TEXT, [DIMENSION_PROBE_TEXT]):
            return httpx.Response(200, json=[[1.0] + [0.0] * (dimension - 1)])
        return httpx.Response(
            424, json={"error": "backend error: CUDA out of memory", "error_type": "Backend"}
        )

    failing = await TEIEmbedder.connect(
        settings.model_copy(update={"tei_url": "http://tei.test"}), transport=httpx.MockTransport(tei)
    )
    pipeline = IndexingPipeline(
        chunker=services.chunker,
        embedder=failing,
        store=services.store,
        documents=services.documents,
        bm25=services.bm25,
        lock=LocalDocumentLock(),
    )
    try:
        with pytest.raises(EmbedderError, match="CUDA out of memory"):
            await pipeline.index(_page("replacement text about puffins and gannets"))
    finally:
        await failing.aclose()
    assert await _points(services) == before
    record = await services.documents.get(document_id(canonicalize_url(URL)))
    assert record is not None
    assert record.chunk_count == len(before)


class _TakenOverWhileEmbedding:
    """The real model, during whose call the page's lock lapses and another writer takes it (a stalled
    holder: a pause longer than the lease)."""

    def __init__(
        self, embedder: LocalModelEmbedder, connection: aioredis.Redis, key: str, lease: float
    ) -> None:
        self._embedder = embedder
        self._connection = connection
        self._key = key
        self._lease = lease

    @property
    def info(self) -> EmbedderInfo:
        return self._embedder.info

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        vectors = await self._embedder.embed_documents(texts)
        await self._connection.set(self._key, "another-writer")
        await asyncio.sleep(self._lease)  # a renewal finds the lock taken
        return vectors

    async def embed_query(self, text: str) -> Vector:
        return await self._embedder.embed_query(text)

    async def health(self) -> None:
        await self._embedder.health()

    async def aclose(self) -> None:
        return None


async def test_a_writer_that_lost_its_documents_lock_writes_nothing(
    services: Services, embedder: LocalModelEmbedder, redis_url: str
) -> None:
    await services.pipeline.index(_page("first version about petrels"))
    before = await _points(services)
    doc_id = document_id(canonicalize_url(URL))
    connection = aioredis.Redis.from_url(redis_url)
    lease = 0.6
    pipeline = IndexingPipeline(
        chunker=services.chunker,
        embedder=_TakenOverWhileEmbedding(embedder, connection, f"{KEY_PREFIX}{doc_id}", lease),
        store=services.store,
        documents=services.documents,
        bm25=services.bm25,
        lock=RedisDocumentLock(connection, lease_seconds=lease, wait_seconds=1),
    )
    try:
        with pytest.raises(LockLostError, match="to another writer"):
            await pipeline.index(_page("second version about shearwaters"))
        assert await connection.get(f"{KEY_PREFIX}{doc_id}") == b"another-writer"  # left to its holder
    finally:
        await connection.aclose()
    assert await _points(services) == before
    record = await services.documents.get(doc_id)
    assert record is not None
    assert record.chunk_count == len(before)
    assert [p["text"] for p in before.values()] == ["first version about petrels"]


async def test_a_removal_whose_delete_fails_leaves_a_page_the_next_delivery_indexes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await services.pipeline.index(_page("text about fulmars"))

    async def vector_store_down(*_: object) -> None:
        raise DependencyUnavailableError("qdrant", "connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(services.store, "delete_chunks_from", vector_store_down)
        with pytest.raises(DependencyUnavailableError):
            await services.pipeline.remove(URL)
    record = await services.documents.get(document_id(canonicalize_url(URL)))
    assert record is not None
    assert record.status == "gone"
    # The same content delivered again is indexed anew, not skipped as unchanged.
    assert (await services.pipeline.index(_page("text about fulmars"))).status is IndexStatus.INDEXED


async def test_a_retried_job_reports_its_earlier_tries_write_as_indexed(services: Services) -> None:
    """A job that wrote its page and then failed (recording its end, a killed worker) runs again with the
    same page: the page was indexed by this delivery, not found unchanged (a change event would close
    as `unchanged`)."""
    delivery = _page("text about storm petrels")
    assert (await services.pipeline.index(delivery)).status is IndexStatus.INDEXED
    assert (await services.pipeline.index(delivery)).status is IndexStatus.INDEXED  # the retry
    # The same content delivered again later is unchanged.
    assert (await services.pipeline.index(_page("text about storm petrels"))).status is IndexStatus.UNCHANGED
    assert (await services.pipeline.index(delivery)).status is IndexStatus.SUPERSEDED  # older than that one


async def test_document_ids_are_the_canonical_url_uuid5(services: Services) -> None:
    outcome = await services.pipeline.index(_page("x"))
    assert uuid.UUID(outcome.doc_id) == document_id(canonicalize_url(URL))


async def test_embedded_sqlite_database(
    settings: Settings, embedder: LocalModelEmbedder, tmp_path: Path
) -> None:
    """The embedded mode's SQLite hands back naive datetimes unless told otherwise; re-indexing must work."""
    sqlite = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"})
    services = await Services.start(sqlite, embedder=embedder)
    try:
        first = await services.pipeline.index(_page("first text about swans"))
        assert first.status is IndexStatus.INDEXED
        assert (
            await services.pipeline.index(_page("first text about swans"))
        ).status is IndexStatus.UNCHANGED
        assert (await services.pipeline.index(_page("second text about geese"))).status is IndexStatus.INDEXED
        record = await services.documents.get(document_id(canonicalize_url(URL)))
        assert record is not None
        assert record.indexed_at.tzinfo is not None
    finally:
        await services.aclose()


async def test_a_new_index_setup_re_embeds_unchanged_pages(services: Services) -> None:
    await services.pipeline.index(_page("text about cormorants"))
    reconfigured = IndexingPipeline(
        chunker=services.chunker,
        embedder=services.embedder,
        store=services.store,
        documents=services.documents,
        bm25=services.bm25,
        lock=LocalDocumentLock(),
        index_signature="another model or collection",
    )
    assert (await reconfigured.index(_page("text about cormorants"))).status is IndexStatus.INDEXED
    assert (await reconfigured.index(_page("text about cormorants"))).status is IndexStatus.UNCHANGED


async def test_database_down_is_dependency_unavailable(
    settings: Settings, embedder: LocalModelEmbedder
) -> None:
    down = settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"})
    services = await Services.start(down, embedder=embedder, migrate=False)
    try:
        with pytest.raises(DependencyUnavailableError, match="database"):
            await services.pipeline.index(_page("text"))
        assert (await services.health())["database"] == "unavailable"
    finally:
        await services.aclose()


async def test_a_batch_gives_each_page_the_outcome_it_would_have_alone(services: Services) -> None:
    """New, unchanged, older and repeated pages in one batch: each ends as `index` would have ended it."""
    earlier = utc_now() - timedelta(hours=1)
    await services.pipeline.index(_page("text about kittiwakes", received_at=earlier))
    other = PageDocument(url="https://example.com/other", markdown="# Other\n\ntext about fulmars")
    batch = [
        _page("text about kittiwakes", received_at=earlier + timedelta(minutes=1)),  # unchanged
        other,  # new
        _page("text about shags", received_at=earlier - timedelta(minutes=1)),  # older than the index
        _page("text about razorbills", received_at=earlier + timedelta(minutes=2)),  # a second pass
    ]
    outcomes = await services.pipeline.index_many(batch)

    assert [o.status for o in outcomes] == [
        IndexStatus.UNCHANGED,
        IndexStatus.INDEXED,
        IndexStatus.SUPERSEDED,
        IndexStatus.INDEXED,
    ]
    assert {o.batch_pages for o in outcomes} == {4}
    assert [o.url for o in outcomes] == [p.url for p in batch]
    record = await services.documents.get(document_id(canonicalize_url(URL)))
    assert record is not None
    assert record.content_hash == outcomes[3].content_hash
    texts = " ".join(str(payload["text"]) for payload in (await _points(services)).values())
    assert "razorbills" in texts
    assert "kittiwakes" not in texts
    assert "shags" not in texts
    assert "fulmars" in " ".join(
        str(payload["text"]) for payload in (await _points(services, other.url)).values()
    )
