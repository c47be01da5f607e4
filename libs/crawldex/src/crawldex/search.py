"""Hybrid, semantic and keyword search over the vector store, with client-side fusion.

Fusion runs here rather than in Qdrant so that RRF's k (60, as in Cormack et al.; Qdrant's own
default is 2) and the weighted mode behave the same on a Qdrant server and in the embedded store.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crawldex.adapters.embedder import Embedder
from crawldex.adapters.qdrant import PointFilter, ScoredPoint, VectorStore
from crawldex.keyword import BM25Encoder
from crawldex.telemetry.metrics import SEARCH_DURATION, SEARCH_RESULTS, SEARCHES
from crawldex.telemetry.tracing import tracer
from crawldex.urls import canonicalize_url


class SearchMode(enum.StrEnum):
    HYBRID = "hybrid"
    SEMANTIC = "semantic"
    KEYWORD = "keyword"


class Fusion(enum.StrEnum):
    RRF = "rrf"
    WEIGHTED = "weighted"


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str | None = Field(default=None, max_length=512, description="Host, without or with 'www.'.")
    url_prefix: str | None = Field(
        default=None, max_length=8192, description="URL prefix, matched at path-segment boundaries."
    )
    crawl_id: str | None = Field(default=None, max_length=256)
    language: str | None = Field(default=None, max_length=64, description="'en' matches en, en-US, ...")
    indexed_after: float | None = Field(default=None, description="Unix time; only chunks indexed later.")

    @field_validator("url_prefix")
    @classmethod
    def _canonical_prefix(cls, value: str | None) -> str | None:
        return canonicalize_url(value) if value else None

    def to_point_filter(self) -> PointFilter:
        domain = self.domain.strip().lower().rstrip(".").removeprefix("www.") if self.domain else None
        language = self.language.strip().lower().replace("_", "-") if self.language else None
        return PointFilter(
            domain=domain or None,
            url_prefix=self.url_prefix,
            crawl_id=self.crawl_id,
            language=language or None,
            indexed_after=self.indexed_after,
        )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000)
    mode: SearchMode = SearchMode.HYBRID
    limit: int = Field(default=10, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1000)
    filters: SearchFilters | None = None
    fusion: Fusion | None = Field(default=None, description="Hybrid fusion; default from configuration.")
    vector_weight: float | None = Field(default=None, ge=0, le=1, description="Weighted fusion only.")

    @field_validator("mode", mode="before")
    @classmethod
    def _bm25_alias(cls, value: object) -> object:
        return SearchMode.KEYWORD if isinstance(value, str) and value.lower() == "bm25" else value

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value


class SearchResult(BaseModel):
    id: str
    url: str
    title: str | None
    description: str | None
    text: str
    score: float
    chunk_index: int
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SearchResult]
    total: int = Field(description="Ranked results available for paging (bounded by the candidate window).")
    query: str
    mode: SearchMode
    took_ms: float


@dataclass(frozen=True)
class SearchDefaults:
    """What a request does not say; the same defaults as ``Settings`` (crawldex.config)."""

    rrf_k: int = 60
    fusion: Fusion = Fusion.WEIGHTED
    vector_weight: float = 0.6
    keyword_weight: float = 0.4
    candidates: int = 100


def rrf_fuse(rankings: list[list[ScoredPoint]], k: int) -> list[tuple[ScoredPoint, float]]:
    """Reciprocal rank fusion: score = Σ 1/(k + rank), rank counted from 1 in each list."""
    scores: dict[str, float] = {}
    points: dict[str, ScoredPoint] = {}
    for ranking in rankings:
        for rank, point in enumerate(ranking, start=1):
            scores[point.id] = scores.get(point.id, 0.0) + 1.0 / (k + rank)
            points.setdefault(point.id, point)
    return sorted(((points[i], s) for i, s in scores.items()), key=lambda item: (-item[1], item[0].id))


def weighted_fuse(
    dense: list[ScoredPoint], keyword: list[ScoredPoint], vector_weight: float, keyword_weight: float
) -> list[tuple[ScoredPoint, float]]:
    """Weighted sum of min-max normalised scores (a point missing from one list scores 0 there)."""
    scores: dict[str, float] = {}
    points: dict[str, ScoredPoint] = {}
    for ranking, weight in ((dense, vector_weight), (keyword, keyword_weight)):
        if not ranking:
            continue
        top, bottom = ranking[0].score, ranking[-1].score
        span = top - bottom
        for point in ranking:
            normalised = (point.score - bottom) / span if span > 0 else 1.0
            scores[point.id] = scores.get(point.id, 0.0) + weight * normalised
            points.setdefault(point.id, point)
    return sorted(((points[i], s) for i, s in scores.items()), key=lambda item: (-item[1], item[0].id))


_RESULT_FIELDS = {"url", "title", "description", "text", "chunk_index"}
_INTERNAL_FIELDS = {"url_prefixes", "language_primary", "indexed_at_ts"}


def _result(point: ScoredPoint, payload: dict[str, Any], score: float) -> SearchResult:
    return SearchResult(
        id=point.id,
        url=str(payload.get("url", "")),
        title=payload.get("title"),
        description=payload.get("description"),
        text=str(payload.get("text", "")),
        score=score,
        chunk_index=int(payload.get("chunk_index", 0)),
        metadata={k: v for k, v in payload.items() if k not in _RESULT_FIELDS | _INTERNAL_FIELDS},
    )


class SearchService:
    def __init__(
        self, *, embedder: Embedder, store: VectorStore, bm25: BM25Encoder, defaults: SearchDefaults
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._bm25 = bm25
        self._defaults = defaults

    async def search(self, request: SearchRequest) -> SearchResponse:
        started = time.perf_counter()
        mode = request.mode.value
        with tracer().start_as_current_span("search", attributes={"crawldex.search.mode": mode}):
            try:
                response = await self._search(request, started)
            except BaseException:
                SEARCHES.labels(mode, "error").inc()
                raise
        SEARCHES.labels(mode, "ok").inc()
        SEARCH_DURATION.labels(mode).observe(time.perf_counter() - started)
        SEARCH_RESULTS.labels(mode).observe(len(response.results))
        return response

    async def _search(self, request: SearchRequest, started: float) -> SearchResponse:
        window = request.offset + request.limit
        point_filter = (request.filters or SearchFilters()).to_point_filter()
        want_dense = request.mode in (SearchMode.HYBRID, SearchMode.SEMANTIC)
        want_keyword = request.mode in (SearchMode.HYBRID, SearchMode.KEYWORD)
        dense_vector = await self._embedder.embed_query(request.query) if want_dense else None
        keyword_vector = self._bm25.encode_query(request.query) if want_keyword else None
        per_mode = max(window, self._defaults.candidates) if request.mode is SearchMode.HYBRID else window
        dense, keyword = await self._store.search(
            dense=dense_vector,
            keyword=keyword_vector,
            point_filter=point_filter,
            limit=per_mode,
            with_payload=False,
        )
        ranked: list[tuple[ScoredPoint, float]]
        if request.mode is SearchMode.SEMANTIC:
            ranked = [(p, p.score) for p in dense]
        elif request.mode is SearchMode.KEYWORD:
            ranked = [(p, p.score) for p in keyword]
        elif (request.fusion or self._defaults.fusion) is Fusion.WEIGHTED:
            vector_weight = (
                request.vector_weight if request.vector_weight is not None else self._defaults.vector_weight
            )
            keyword_weight = (
                1.0 - request.vector_weight
                if request.vector_weight is not None
                else self._defaults.keyword_weight
            )
            ranked = weighted_fuse(dense, keyword, vector_weight, keyword_weight)
        else:
            ranked = rrf_fuse([dense, keyword], self._defaults.rrf_k)
        page = ranked[request.offset : window]
        # Payloads of the page only: hybrid ranks up to 2 x candidates points to return a few. A point
        # deleted since it was ranked (a re-index in between) is left out of the page.
        payloads = await self._store.payloads([point.id for point, _ in page])
        return SearchResponse(
            results=[
                _result(point, payloads[point.id], score) for point, score in page if point.id in payloads
            ],
            total=len(ranked),
            query=request.query,
            mode=request.mode,
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )
