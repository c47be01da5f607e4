"""Hybrid, semantic and keyword search over the vector store, with client-side fusion.

Fusion runs here rather than in Qdrant so that RRF's k (60, as in Cormack et al.; Qdrant's own
default is 2), the weighted mode and grouping by page behave the same on a Qdrant server and in the
embedded store.

Grouped by page (the default), each mode's candidate chunks are first reduced to each page's best
chunk, so hybrid fusion weighs a page's dense evidence against its keyword evidence even when the
two come from different chunks of it (a page is one result, shown through its best dense chunk).
On SciFact that is worth about 0.01 nDCG@10 over fusing chunk by chunk (docs/benchmarks.md).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crawldex.adapters.embedder import Embedder
from crawldex.adapters.qdrant import DOC_ID, PointFilter, ScoredPoint, VectorStore
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


class GroupBy(enum.StrEnum):
    PAGE = "page"
    CHUNK = "chunk"


# Chunks fetched for each result wanted when grouping by page: one page's chunks often rank together.
CHUNKS_PER_PAGE_RESULT = 4


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str | None = Field(default=None, max_length=512, description="Host, without or with 'www.'.")
    url_prefix: str | None = Field(
        default=None, max_length=8192, description="URL prefix, matched at path-segment boundaries."
    )
    crawl_id: str | None = Field(default=None, max_length=256)
    language: str | None = Field(default=None, max_length=64, description="'en' matches en, en-US, ...")
    indexed_after: float | None = Field(
        default=None, allow_inf_nan=False, description="Unix time; only chunks indexed later."
    )

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
    group_by: GroupBy | None = Field(
        default=None,
        description="'page': one result per page, its best chunk (hybrid fuses per page); "
        "'chunk': every chunk ranked on its own. Default from configuration.",
    )

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
    vector_weight: float = 0.55
    keyword_weight: float = 0.45
    candidates: int = 100
    group_by: GroupBy = GroupBy.PAGE


Key = Callable[[ScoredPoint], str]


def chunk_key(point: ScoredPoint) -> str:
    return point.id


def page_key(point: ScoredPoint) -> str:
    """The page a chunk belongs to: its ``doc_id`` (the store gives it with ``with_doc_id``)."""
    return str(point.payload.get(DOC_ID) or point.id)


def best_per_page(ranking: list[ScoredPoint]) -> list[ScoredPoint]:
    """Each page's first (best) chunk of a ranking, in order."""
    seen: set[str] = set()
    best: list[ScoredPoint] = []
    for point in ranking:
        page = page_key(point)
        if page not in seen:
            seen.add(page)
            best.append(point)
    return best


def rrf_fuse(
    rankings: list[list[ScoredPoint]], k: int, key: Key = chunk_key
) -> list[tuple[ScoredPoint, float]]:
    """Reciprocal rank fusion: score = Σ 1/(k + rank), rank counted from 1 in each list."""
    scores: dict[str, float] = {}
    points: dict[str, ScoredPoint] = {}
    for ranking in rankings:
        for rank, point in enumerate(ranking, start=1):
            name = key(point)
            scores[name] = scores.get(name, 0.0) + 1.0 / (k + rank)
            points.setdefault(name, point)
    return sorted(((points[n], s) for n, s in scores.items()), key=lambda item: (-item[1], key(item[0])))


def _standardised(ranking: list[ScoredPoint]) -> list[float]:
    """Each score in standard deviations from the list's mean (all 0 when the scores are equal)."""
    scores = [point.score for point in ranking]
    mean = math.fsum(scores) / len(scores)
    spread = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / len(scores))
    return [(s - mean) / spread if spread > 0 else 0.0 for s in scores]


def weighted_fuse(
    dense: list[ScoredPoint],
    keyword: list[ScoredPoint],
    vector_weight: float,
    keyword_weight: float,
    key: Key = chunk_key,
) -> list[tuple[ScoredPoint, float]]:
    """Weighted sum of standardised (z-score) scores. A point missing from one list takes that
    list's lowest: it ranked below every candidate there. Z-scores rather than min-max, which leans
    on the two extremes of each list: on SciFact 0.003-0.006 nDCG@10 better grouped by page."""
    lists: list[tuple[float, dict[str, float], float]] = []  # (weight, z-score by key, the list's lowest)
    points: dict[str, ScoredPoint] = {}
    for ranking, weight in ((dense, vector_weight), (keyword, keyword_weight)):
        if not ranking:
            continue
        values = _standardised(ranking)
        by_key: dict[str, float] = {}
        for point, value in zip(ranking, values, strict=True):
            name = key(point)
            by_key.setdefault(name, value)
            points.setdefault(name, point)
        lists.append((weight, by_key, min(values)))
    scores = {name: math.fsum(weight * z.get(name, floor) for weight, z, floor in lists) for name in points}
    return sorted(((points[n], s) for n, s in scores.items()), key=lambda item: (-item[1], key(item[0])))


def rank_candidates(
    dense: list[ScoredPoint],
    keyword: list[ScoredPoint],
    *,
    mode: SearchMode,
    group_by: GroupBy,
    fusion: Fusion,
    vector_weight: float,
    keyword_weight: float,
    rrf_k: int,
) -> list[tuple[ScoredPoint, float]]:
    """The ranked results (point, score) of a mode from its candidate lists, best first."""
    key = chunk_key
    if group_by is GroupBy.PAGE:
        dense, keyword, key = best_per_page(dense), best_per_page(keyword), page_key
    if mode is SearchMode.SEMANTIC:
        return [(p, p.score) for p in dense]
    if mode is SearchMode.KEYWORD:
        return [(p, p.score) for p in keyword]
    if fusion is Fusion.WEIGHTED:
        return weighted_fuse(dense, keyword, vector_weight, keyword_weight, key)
    return rrf_fuse([dense, keyword], rrf_k, key)


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
        group_by = request.group_by or self._defaults.group_by
        per_mode = window * (CHUNKS_PER_PAGE_RESULT if group_by is GroupBy.PAGE else 1)
        if request.mode is SearchMode.HYBRID:
            per_mode = max(per_mode, self._defaults.candidates)
        dense, keyword = await self._store.search(
            dense=dense_vector,
            keyword=keyword_vector,
            point_filter=point_filter,
            limit=per_mode,
            with_payload=False,
            with_doc_id=group_by is GroupBy.PAGE,
        )
        if request.vector_weight is not None:
            vector_weight, keyword_weight = request.vector_weight, 1.0 - request.vector_weight
        else:
            vector_weight, keyword_weight = self._defaults.vector_weight, self._defaults.keyword_weight
        ranked = rank_candidates(
            dense,
            keyword,
            mode=request.mode,
            group_by=group_by,
            fusion=request.fusion or self._defaults.fusion,
            vector_weight=vector_weight,
            keyword_weight=keyword_weight,
            rrf_k=self._defaults.rrf_k,
        )
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
