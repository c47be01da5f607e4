"""Search on the embedded Qdrant with the real model: modes, filters, paging, and BM25 against rank-bm25."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from qdrant_client import models
from rank_bm25 import BM25Okapi

from crawldex.adapters.qdrant import DENSE, KEYWORD, PointFilter, ScoredPoint, VectorStore
from crawldex.config import Settings
from crawldex.keyword import tokenize
from crawldex.models import PageDocument, utc_now
from crawldex.search import Fusion, GroupBy, SearchFilters, SearchMode, SearchRequest
from crawldex.services import Services

PAGES = [
    (
        "https://www.alpha.example/docs/queues/redis",
        "en",
        "crawl-1",
        "Redis lists hold the jobs of every queue.",
    ),
    (
        "https://www.alpha.example/docs/queues/kafka",
        "en-US",
        "crawl-1",
        "Kafka topics partition a stream of events.",
    ),
    (
        "https://www.alpha.example/blog/2024/launch",
        "en-GB",
        "crawl-2",
        "We launched hybrid search for crawled pages.",
    ),
    (
        "https://beta.example/docs/suche",
        "de",
        "crawl-3",
        "Die hybride Suche verbindet Vektoren und Schlagworte.",
    ),
    (
        "https://beta.example/docs/queues-guide",
        "en",
        "crawl-3",
        "A guide to retrying failed queue jobs with backoff.",
    ),
]


@pytest.fixture
async def corpus(services: Services) -> Services:
    for url, language, crawl_id, text in PAGES:
        await services.pipeline.index(
            PageDocument(url=url, markdown=text, title=text.split()[0], language=language, crawl_id=crawl_id)
        )
    return services


async def _urls(
    services: Services, query: str, mode: SearchMode = SearchMode.HYBRID, **filters: object
) -> list[str]:
    response = await services.search.search(
        SearchRequest(query=query, mode=mode, limit=10, filters=SearchFilters.model_validate(filters))
    )
    return [r.url for r in response.results]


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_each_mode_finds_the_page(corpus: Services, mode: SearchMode) -> None:
    response = await corpus.search.search(SearchRequest(query="redis lists jobs queue", mode=mode))
    assert response.results[0].url == PAGES[0][0]
    assert response.mode is mode
    assert response.query == "redis lists jobs queue"
    top = response.results[0]
    assert top.chunk_index == 0
    assert top.text == PAGES[0][3]
    assert top.title == "Redis"
    assert top.metadata["domain"] == "alpha.example"
    assert top.metadata["crawl_id"] == "crawl-1"
    assert "url_prefixes" not in top.metadata
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)


async def test_filters(corpus: Services) -> None:
    assert set(await _urls(corpus, "queue", domain="www.alpha.example")) == {p[0] for p in PAGES[:3]}
    assert set(await _urls(corpus, "queue", domain="BETA.example")) == {p[0] for p in PAGES[3:]}
    assert set(await _urls(corpus, "queue", url_prefix="https://alpha.example/docs/queues")) == set()
    assert set(await _urls(corpus, "queue", url_prefix="https://www.alpha.example/docs/queues")) == {
        p[0] for p in PAGES[:2]
    }
    # Prefixes match whole path segments: /docs/queues does not match /docs/queues-guide.
    assert PAGES[4][0] not in await _urls(corpus, "queue", url_prefix="https://beta.example/docs/queues")
    assert set(await _urls(corpus, "queue", crawl_id="crawl-3")) == {p[0] for p in PAGES[3:]}
    assert set(await _urls(corpus, "queue", language="en")) == {PAGES[i][0] for i in (0, 1, 2, 4)}
    assert set(await _urls(corpus, "queue", language="en-us")) == {PAGES[1][0]}
    assert await _urls(corpus, "queue", indexed_after=(utc_now() + timedelta(hours=1)).timestamp()) == []
    assert len(await _urls(corpus, "queue", indexed_after=(utc_now() - timedelta(hours=1)).timestamp())) == 5


async def test_paging_is_consistent(corpus: Services) -> None:
    whole = await corpus.search.search(SearchRequest(query="search queue jobs", limit=5))
    first = await corpus.search.search(SearchRequest(query="search queue jobs", limit=2))
    second = await corpus.search.search(SearchRequest(query="search queue jobs", limit=2, offset=2))
    assert [r.id for r in first.results + second.results] == [r.id for r in whole.results[:4]]
    assert whole.total == 5
    beyond = await corpus.search.search(SearchRequest(query="search", limit=10, offset=50))
    assert beyond.results == []


async def test_keyword_query_without_terms_finds_nothing(corpus: Services) -> None:
    response = await corpus.search.search(SearchRequest(query="the and of", mode=SearchMode.KEYWORD))
    assert response.results == []
    assert response.total == 0


async def test_results_are_grouped_by_page_unless_chunks_are_asked_for(services: Services) -> None:
    sections = [
        f"## Part {n}\n\n" + " ".join(["Redis lists hold the queued jobs of crawldex."] * 60)
        for n in range(4)
    ]
    await services.pipeline.index(
        PageDocument(url="https://long.example/guide", markdown="\n\n".join(sections))
    )
    await services.pipeline.index(
        PageDocument(url="https://short.example/", markdown="Redis lists and queues.")
    )
    for mode in SearchMode:
        by_page = await services.search.search(SearchRequest(query="redis lists queued jobs", mode=mode))
        urls = [r.url for r in by_page.results]
        assert sorted(urls) == ["https://long.example/guide", "https://short.example/"], mode
        assert by_page.total == 2, mode
        by_chunk = await services.search.search(
            SearchRequest(query="redis lists queued jobs", mode=mode, group_by=GroupBy.CHUNK)
        )
        chunks_of_long = [r.chunk_index for r in by_chunk.results if r.url == "https://long.example/guide"]
        assert len(chunks_of_long) > 2, mode
        # The page's result is its best chunk in the mode.
        best = next(r for r in by_chunk.results if r.url == "https://long.example/guide")
        if mode is not SearchMode.HYBRID:
            assert next(r for r in by_page.results if r.url == best.url).id == best.id


async def test_grouping_by_page_reads_doc_ids_from_qdrant_when_there_is_no_local_index(
    services: Services,
) -> None:
    """The path a Qdrant server takes: the query asks for the doc_id payload field alone."""
    await services.pipeline.index(PageDocument(url="https://a.example/", markdown="Redis lists hold jobs."))
    store = services.store

    async def keyword_hits() -> tuple[list[ScoredPoint], list[ScoredPoint]]:
        query = services.bm25.encode_query("redis jobs")
        return await store.search(
            dense=None,
            keyword=query,
            point_filter=PointFilter(),
            limit=5,
            with_payload=False,
            with_doc_id=True,
        )

    with_index = await keyword_hits()
    store._local, store._local_wanted = None, False
    without = await keyword_hits()
    assert not store.has_local_index
    assert with_index == without
    assert without[1]
    assert all(set(p.payload) == {"doc_id"} for p in without[1])


async def test_weighted_fusion(corpus: Services) -> None:
    response = await corpus.search.search(
        SearchRequest(query="redis lists", fusion=Fusion.WEIGHTED, vector_weight=1.0)
    )
    semantic = await corpus.search.search(SearchRequest(query="redis lists", mode=SearchMode.SEMANTIC))
    assert [r.id for r in response.results] == [r.id for r in semantic.results]


class _LuceneIdfBM25(BM25Okapi):  # type: ignore[misc]
    """rank-bm25's Okapi BM25 with the IDF Qdrant's Modifier.IDF applies: ln(1 + (N - n + 0.5) / (n + 0.5))."""

    def _calc_idf(self, nd: dict[str, int]) -> None:
        self.idf = {word: math.log(1 + (self.corpus_size - n + 0.5) / (n + 0.5)) for word, n in nd.items()}


async def test_keyword_mode_ranks_like_rank_bm25(settings: Settings, embedder: object) -> None:
    rng = random.Random(7)
    vocabulary = [f"term{i}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(len(vocabulary))]  # Zipf-like, as in real text
    documents = [" ".join(rng.choices(vocabulary, weights, k=rng.randint(20, 80))) for _ in range(150)]
    average = sum(len(tokenize(d)) for d in documents) / len(documents)
    tuned = settings.model_copy(update={"bm25_avg_doc_tokens": average})
    services = await Services.start(tuned, embedder=embedder)  # type: ignore[arg-type]
    try:
        for i, text in enumerate(documents):
            await services.pipeline.index(PageDocument(url=f"https://bm25.example/doc/{i}", markdown=text))
        oracle = _LuceneIdfBM25([tokenize(d) for d in documents], k1=1.2, b=0.75)
        oracle.avgdl = average
        agree = 0
        queries = [" ".join(rng.sample(vocabulary[5:120], 3)) for _ in range(40)]
        for query in queries:
            scores = oracle.get_scores(tokenize(query))
            expected = sorted(range(len(documents)), key=lambda i: -scores[i])[:10]
            response = await services.search.search(
                SearchRequest(query=query, mode=SearchMode.KEYWORD, limit=10)
            )
            got = [int(r.url.rsplit("/", 1)[1]) for r in response.results]
            for position, doc in enumerate(got):
                assert response.results[position].score == pytest.approx(scores[doc], rel=1e-4)
            agree += got == expected or [round(scores[i], 4) for i in got] == [
                round(scores[i], 4) for i in expected
            ]
        assert agree == len(queries)
    finally:
        await services.aclose()


async def test_keyword_search_finds_other_forms_of_a_word(corpus: Services) -> None:
    response = await corpus.search.search(SearchRequest(query="retried queueing", mode=SearchMode.KEYWORD))
    assert response.results[0].url == "https://beta.example/docs/queues-guide"  # "retrying ... queue"


async def test_a_collection_keeps_the_stemmer_it_was_built_with(
    settings: Settings, embedder: object, caplog: pytest.LogCaptureFixture
) -> None:
    unstemmed = settings.model_copy(update={"keyword_stemmer": "none"})
    services = await Services.start(unstemmed, embedder=embedder)  # type: ignore[arg-type]
    try:
        assert services.store.keyword_stemmer == services.bm25.stemmer == "none"
        await services.pipeline.index(
            PageDocument(url="https://stem.example/a", markdown="Retrying queue jobs.")
        )
    finally:
        await services.aclose()
    # Started again with the default (english): the collection's vectors are unstemmed, so are queries.
    services = await Services.start(settings, embedder=embedder)  # type: ignore[arg-type]
    try:
        assert services.store.keyword_stemmer == services.bm25.stemmer == "none"
        assert "built with keyword stemmer 'none', not the configured 'english'" in caplog.text
        exact = await services.search.search(SearchRequest(query="queue", mode=SearchMode.KEYWORD))
        other_form = await services.search.search(SearchRequest(query="queues", mode=SearchMode.KEYWORD))
        assert [r.url for r in exact.results] == ["https://stem.example/a"]
        assert other_form.results == []
    finally:
        await services.aclose()


async def test_a_collection_from_before_stemming_counts_as_unstemmed(settings: Settings) -> None:
    store = VectorStore.open(
        url=None, api_key=None, path=str(settings.qdrant_path), collection=settings.qdrant_collection
    )
    try:
        store._client.create_collection(  # as crawldex created collections before it recorded a stemmer
            settings.qdrant_collection,
            vectors_config={DENSE: models.VectorParams(size=384, distance=models.Distance.COSINE)},
            sparse_vectors_config={KEYWORD: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        await store.ensure_collection(384, "english")
        assert store.keyword_stemmer == "none"
    finally:
        store.close()
