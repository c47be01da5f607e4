"""The embedded store's local index against qdrant-client's own local query on the same collection.

Real embedded Qdrant, the BM25 vectors of real SciFact abstracts chunked by crawldex, payloads built
by the indexing pipeline, random dense vectors. Every comparison asks qdrant-client for its whole
ranking and checks that the fast path returns a top-k of it: keyword scores bit for bit, dense
(cosine) scores to float32 rounding, each id with the score Qdrant gives it. Only the order among
equal scores is free.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from crawldex.adapters import local_index
from crawldex.adapters.qdrant import KEYWORD, IndexedPoint, PointFilter, ScoredPoint, VectorStore
from crawldex.chunking import Chunker, load_tokenizer
from crawldex.cleaning import clean_markdown
from crawldex.keyword import BM25Encoder, SparseVector, tokenize
from crawldex.models import PageDocument
from crawldex.pipeline import IndexingPipeline
from crawldex.urls import canonicalize_url

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact-subset"
DIMENSION = 8
DOCUMENTS = 250
SITES = ("https://www.alpha.example", "https://beta.example", "https://gamma.example")
SECTIONS = ("docs/guides", "docs/api", "blog")
LANGUAGES = ("en", "en-US", "en-GB", "de", None)
CRAWLS = ("crawl-1", "crawl-2", None)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BM25 = BM25Encoder()

pytestmark = pytest.mark.slow


def _texts() -> list[str]:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.fail(f"scifact-subset not found at {SCIFACT} (expected ../shared/data/scifact-subset)")
    rows = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return [str(row["text"]) for row in sorted(rows, key=lambda r: int(r["_id"]))]


def _queries() -> list[str]:
    lines = (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [str(json.loads(line)["text"]) for line in lines]


class Corpus:
    """Pages of SciFact abstracts, chunked and payloaded the way the pipeline does it."""

    def __init__(self) -> None:
        self.texts = _texts()
        self.chunker = Chunker(
            load_tokenizer(None), chunk_tokens=100, overlap_tokens=10, max_input_tokens=256
        )
        self.rng = np.random.default_rng(7)
        self.urls: dict[uuid.UUID, str] = {}
        self.initial = [point for n in range(DOCUMENTS) for point in self.page(n, self.texts[n])]

    def url(self, n: int) -> str:
        return f"{SITES[n % 3]}/{SECTIONS[(n // 3) % 3]}/{n}"

    def page(
        self, n: int, text: str, *, crawl_id: str | None = None, minute: int | None = None
    ) -> list[IndexedPoint]:
        url = self.url(n)
        canonical = canonicalize_url(url)
        doc_id = uuid.uuid5(uuid.NAMESPACE_URL, canonical)
        self.urls[doc_id] = url
        chunks = [c.text for c in self.chunker.chunk(clean_markdown(text))]
        page = PageDocument(
            url=url,
            markdown=text,
            title=text.split(".", 1)[0][:80],
            language=LANGUAGES[n % len(LANGUAGES)],
            crawl_id=crawl_id if crawl_id is not None else CRAWLS[n % len(CRAWLS)],
        )
        payload = IndexingPipeline._payload(
            page,
            canonical,
            str(doc_id),
            hashlib.sha256(text.encode()).hexdigest(),
            len(chunks),
            T0 + timedelta(minutes=n if minute is None else minute),
        )
        points = []
        for i, chunk in enumerate(chunks):
            dense = self.rng.normal(size=DIMENSION)
            points.append(
                IndexedPoint(
                    id=uuid.uuid5(doc_id, str(i)),
                    dense=(dense / np.linalg.norm(dense)).tolist(),
                    keyword=BM25.encode_document(chunk),
                    payload={**payload, "chunk_index": i, "text": chunk},
                )
            )
        return points


def _random_queries(corpus: Corpus, rng: random.Random, n: int) -> list[SparseVector]:
    """Real claims, and bags of words drawn from the corpus (rare, common, repeated, unknown)."""
    vocabulary = sorted({t for text in corpus.texts[:DOCUMENTS] for t in tokenize(text)})
    claims = _queries()
    found: list[SparseVector] = []
    while len(found) < n:
        kind = rng.randrange(4)
        if kind == 0:
            text = rng.choice(claims)
        elif kind == 1:
            text = " ".join(rng.sample(tokenize(rng.choice(corpus.texts[:DOCUMENTS])), 3))
        elif kind == 2:
            words = rng.sample(vocabulary, rng.randint(1, 6))
            text = " ".join(words + words[:1] + ["zzyzxunknownterm"])
        else:
            text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 3)))
        query = BM25.encode_query(text)
        if not query.is_empty:
            found.append(query)
    return found


def _random_filter(corpus: Corpus, rng: random.Random) -> PointFilter:
    site = rng.choice(SITES)
    section = rng.choice(SECTIONS)
    choices = [
        PointFilter(),
        PointFilter(),
        PointFilter(domain=canonicalize_url(site).split("://")[1].strip("/").removeprefix("www.")),
        PointFilter(url_prefix=canonicalize_url(f"{site}/{section}")),
        PointFilter(url_prefix=canonicalize_url(corpus.url(rng.randrange(DOCUMENTS)))),
        PointFilter(crawl_id=rng.choice(["crawl-1", "crawl-2", "crawl-9"])),
        PointFilter(language=rng.choice(["en", "en-us", "de", "fr"])),
        PointFilter(indexed_after=(T0 + timedelta(minutes=rng.randrange(DOCUMENTS))).timestamp()),
        PointFilter(
            domain="beta.example",
            language="en",
            indexed_after=(T0 + timedelta(minutes=rng.randrange(DOCUMENTS // 2))).timestamp(),
        ),
    ]
    return rng.choice(choices)


def _qdrant_ranking(
    store: VectorStore, query: SparseVector, point_filter: PointFilter, limit: int
) -> list[models.ScoredPoint]:
    return store._client.query_points(
        store.collection,
        query=models.SparseVector(indices=query.indices, values=query.values),
        using=KEYWORD,
        query_filter=point_filter.to_qdrant(),
        limit=limit,
        with_payload=False,
    ).points


def _same_up_to_ties(a: list[ScoredPoint], b: list[ScoredPoint]) -> bool:
    """Equal scores in order, and the same ids above the last score (the tie there may be cut)."""
    if [p.score for p in a] != [p.score for p in b]:
        return False
    last = a[-1].score if a else 0.0
    return {(p.id, p.score) for p in a if p.score > last} == {(p.id, p.score) for p in b if p.score > last}


async def _assert_same_as_qdrant(
    store: VectorStore, queries: list[SparseVector], filters: list[PointFilter], rng: random.Random
) -> int:
    """Compare each query; returns how many returned hits (so a test can tell it compared something)."""
    nonempty = 0
    for query, point_filter in zip(queries, filters, strict=True):
        limit = rng.choice([1, 3, 10, 100])
        _, fast = await store.search(dense=None, keyword=query, point_filter=point_filter, limit=limit)
        assert store.has_local_index  # the fast path answered, not qdrant-client
        every = _qdrant_ranking(store, query, point_filter, limit + 50)
        if len(every) == limit + 50 and every[-1].score == every[limit - 1].score:
            every = _qdrant_ranking(store, query, point_filter, 1_000_000)  # the whole tie group
        qdrant_score = {str(p.id): p.score for p in every}
        context = (query, point_filter, limit)
        assert len(qdrant_score) == len(every), context
        assert [p.score for p in fast] == sorted(qdrant_score.values(), reverse=True)[:limit], context
        assert len({p.id for p in fast}) == len(fast), context
        for hit in fast:
            assert qdrant_score[hit.id] == hit.score, context
            assert hit.payload["chunk_index"] >= 0, context
            assert hit.payload["text"], context
        # Grouping by page asks for each hit's doc_id alone, which the index's column answers.
        _, light = await store.search(
            dense=None,
            keyword=query,
            point_filter=point_filter,
            limit=limit,
            with_payload=False,
            with_doc_id=True,
        )
        assert [(p.id, p.score, p.payload) for p in light] == [
            (p.id, p.score, {"doc_id": p.payload["doc_id"]}) for p in fast
        ], context
        nonempty += bool(fast)
    return nonempty


async def _assert_dense_same_as_qdrant(
    store: VectorStore, filters: list[PointFilter], rng: random.Random
) -> int:
    """Random dense queries (not unit length) alone and with a keyword query, against qdrant-client."""
    nonempty = 0
    for point_filter in filters:
        limit = rng.choice([1, 3, 10, 100])
        query = (rng.uniform(0.1, 10) * np.asarray([rng.gauss(0, 1) for _ in range(DIMENSION)])).tolist()
        keyword = BM25.encode_query("protein cell") if rng.random() < 0.5 else None
        fast, _ = await store.search(dense=query, keyword=keyword, point_filter=point_filter, limit=limit)
        assert store.has_local_index
        every = store._client.query_points(
            store.collection,
            query=query,
            using="dense",
            query_filter=point_filter.to_qdrant(),
            limit=1_000_000,
            with_payload=False,
        ).points
        qdrant_score = {str(p.id): p.score for p in every}
        context = (query, point_filter, limit)
        expected = [p.score for p in every[:limit]]
        assert [p.score for p in fast] == pytest.approx(expected, abs=1e-6), context
        assert len({p.id for p in fast}) == len(fast), context
        for hit in fast:
            assert hit.score == pytest.approx(qdrant_score[hit.id], abs=1e-6), context
            assert hit.payload["text"], context
        nonempty += bool(fast)
    return nonempty


async def _check(store: VectorStore, corpus: Corpus, seed: int, n: int = 60) -> None:
    rng = random.Random(seed)
    queries = _random_queries(corpus, rng, n)
    filters = [_random_filter(corpus, rng) for _ in queries]
    assert await _assert_same_as_qdrant(store, queries, filters, rng) > n // 3
    assert await _assert_dense_same_as_qdrant(store, filters[: n // 2], rng) > n // 6
    assert store._local is not None
    assert len(store._local) == await store.count()


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus()


async def _open(path: Path) -> VectorStore:
    store = VectorStore.open(url=None, api_key=None, path=str(path), collection="keyword")
    await store.ensure_collection(DIMENSION)
    return store


@pytest.fixture(scope="module")
def written(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded store holding the corpus, written once; each test opens its own copy."""
    path = tmp_path_factory.mktemp("keyword") / "qdrant"

    async def write() -> None:
        opened = await _open(path)
        try:
            for start in range(0, len(corpus.initial), 500):
                await opened.upsert(corpus.initial[start : start + 500])
        finally:
            opened.close()

    asyncio.run(write())
    return path


@pytest.fixture
async def store(written: Path, tmp_path: Path) -> AsyncIterator[VectorStore]:
    shutil.copytree(written, tmp_path / "qdrant")
    opened = await _open(tmp_path / "qdrant")  # the index is built from a scroll of the copy
    yield opened
    opened.close()


async def test_fast_path_matches_qdrant_on_random_queries(store: VectorStore, corpus: Corpus) -> None:
    assert await store.count() > DOCUMENTS  # several chunks per abstract
    await _check(store, corpus, seed=1, n=250)


async def test_overwrites_deletes_and_payload_updates_stay_consistent(
    store: VectorStore, corpus: Corpus
) -> None:
    rng = random.Random(2)
    # Overwrite pages with other abstracts (same ids, new vectors), dropping chunks that no longer
    # exist the way the pipeline does, delete whole pages, and move pages to another crawl; check
    # often enough to catch the uncompacted part and the compacted one.
    for step in range(120):
        n = rng.randrange(DOCUMENTS)
        doc_id = uuid.uuid5(uuid.NAMESPACE_URL, canonicalize_url(corpus.url(n)))
        action = rng.randrange(4)
        if action < 2:
            points = corpus.page(n, rng.choice(corpus.texts[DOCUMENTS:]), minute=DOCUMENTS + step)
            await store.upsert(points)
            await store.delete_chunks_from(doc_id, len(points))
        elif action == 2:
            await store.delete_chunks_from(doc_id, 0)
        else:
            await store.set_document_payload(doc_id, {"crawl_id": rng.choice(["crawl-9", None])})
        if step % 30 == 29:
            await _check(store, corpus, seed=step, n=20)
    await _check(store, corpus, seed=3, n=150)


async def test_many_small_writes_then_compaction(
    store: VectorStore, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_index, "COMPACT_MIN_CHANGES", 100)  # compact several times in 100 pages
    index = store._local
    assert index is not None
    compactions = 0
    for n in range(DOCUMENTS, DOCUMENTS + 100):
        before = index._changed
        await store.upsert(corpus.page(n, corpus.texts[n]))
        compactions += index._changed < before
        if n % 30 == 0:
            await _check(store, corpus, seed=n, n=15)
    assert compactions >= 2
    await _check(store, corpus, seed=4, n=60)


async def test_reopened_store_rebuilds_the_index_from_the_collection(
    store: VectorStore, corpus: Corpus, tmp_path: Path
) -> None:
    rng = random.Random(5)
    for n in rng.sample(range(DOCUMENTS), 40):
        doc_id = uuid.uuid5(uuid.NAMESPACE_URL, canonicalize_url(corpus.url(n)))
        await store.delete_chunks_from(doc_id, 1)
    await store.set_document_payload(
        uuid.uuid5(uuid.NAMESPACE_URL, canonicalize_url(corpus.url(7))), {"crawl_id": "crawl-9"}
    )
    queries = _random_queries(corpus, rng, 80)
    filters = [_random_filter(corpus, rng) for _ in queries]
    before = [
        await store.search(dense=None, keyword=q, point_filter=f, limit=10)
        for q, f in zip(queries, filters, strict=True)
    ]
    store.close()
    reopened = await _open(tmp_path / "qdrant")
    try:
        after = [
            await reopened.search(dense=None, keyword=q, point_filter=f, limit=10)
            for q, f in zip(queries, filters, strict=True)
        ]
        for (_, was), (_, now) in zip(before, after, strict=True):
            assert _same_up_to_ties(was, now), (was, now)
        await _check(reopened, corpus, seed=6, n=40)
        _, moved = await reopened.search(
            dense=None,
            keyword=BM25.encode_query(corpus.texts[7]),
            point_filter=PointFilter(crawl_id="crawl-9"),
            limit=5,
        )
        assert moved
        assert {p.payload["url"] for p in moved} == {corpus.url(7)}
    finally:
        reopened.close()


async def test_collection_without_the_idf_modifier(tmp_path: Path, corpus: Corpus) -> None:
    store = VectorStore.open(url=None, api_key=None, path=str(tmp_path / "plain"), collection="keyword")
    try:
        store._client.create_collection(
            "keyword",
            vectors_config={"dense": models.VectorParams(size=DIMENSION, distance=models.Distance.COSINE)},
            sparse_vectors_config={KEYWORD: models.SparseVectorParams()},
        )
        await store.ensure_collection(DIMENSION)
        assert store._local is not None
        assert not store._local.idf
        for n in range(150):
            await store.upsert(corpus.page(n, corpus.texts[n]))
        await _check(store, corpus, seed=8, n=60)
    finally:
        store.close()


async def test_a_failed_write_leaves_a_consistent_index(store: VectorStore, corpus: Corpus) -> None:
    good = corpus.page(DOCUMENTS + 1, corpus.texts[DOCUMENTS + 1])
    bad = IndexedPoint(
        id=uuid.uuid4(), dense=[1.0, 0.0], keyword=BM25.encode_document("mismatched"), payload={}
    )
    with pytest.raises(ValueError, match="dimension"):  # qdrant-client: a dense vector of the wrong size
        await store.upsert([*good, bad])
    assert store._local is None  # dropped: the next search reads the collection again
    await _check(store, corpus, seed=9, n=40)


async def test_collection_of_another_distance_leaves_dense_queries_to_qdrant(
    tmp_path: Path, corpus: Corpus
) -> None:
    store = VectorStore.open(url=None, api_key=None, path=str(tmp_path / "dot"), collection="keyword")
    try:
        store._client.create_collection(
            "keyword",
            vectors_config={"dense": models.VectorParams(size=DIMENSION, distance=models.Distance.DOT)},
            sparse_vectors_config={KEYWORD: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        await store.ensure_collection(DIMENSION)
        assert store._local is not None
        assert store._local.dimension is None  # cosine only: dot products go to qdrant-client
        points = corpus.page(3, corpus.texts[3])
        await store.upsert(points)
        dense, keyword = await store.search(
            dense=points[0].dense, keyword=points[0].keyword, point_filter=PointFilter(), limit=1
        )
        assert dense[0].id == keyword[0].id == str(points[0].id)
    finally:
        store.close()


async def test_invalid_sparse_query_is_rejected_like_qdrant(store: VectorStore) -> None:
    duplicated = SparseVector(indices=[5, 5], values=[1.0, 1.0])
    with pytest.raises(ValueError, match="unique"):
        await store.search(dense=None, keyword=duplicated, point_filter=PointFilter(), limit=10)
