"""The vector store: one Qdrant collection holding a dense and a keyword (sparse BM25) vector per chunk.

A Qdrant server in production (``CRAWLDEX_QDRANT_URL``); without one, qdrant-client's embedded
local mode in ``CRAWLDEX_DATA_DIR``. The local mode keeps its data in this process only, which is why
the embedded mode runs the API and its queue consumers in one process.

qdrant-client is synchronous here on purpose: its local mode runs in the caller's thread either way,
so every call is moved off the event loop with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models

from crawldex.errors import ConfigurationError, DependencyUnavailableError
from crawldex.keyword import SparseVector

DENSE = "dense"
KEYWORD = "keyword"
# Payload fields that filters use; a Qdrant server gets a keyword index on each.
INDEXED_FIELDS = ("doc_id", "domain", "crawl_id", "language", "language_primary", "url_prefixes")

T = TypeVar("T")


@dataclass(frozen=True)
class IndexedPoint:
    id: uuid.UUID
    dense: list[float]
    keyword: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True)
class ScoredPoint:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class PointFilter:
    """Conditions every returned point must meet (all optional, combined with AND)."""

    domain: str | None = None
    url_prefix: str | None = None  # canonical, matched at path-segment boundaries
    crawl_id: str | None = None
    language: str | None = None
    indexed_after: float | None = None  # unix seconds

    def to_qdrant(self) -> models.Filter | None:
        must: list[models.Condition] = []
        if self.domain:
            must.append(_match("domain", self.domain))
        if self.url_prefix:
            must.append(_match("url_prefixes", self.url_prefix))
        if self.crawl_id:
            must.append(_match("crawl_id", self.crawl_id))
        if self.language:
            lang = self.language.lower()
            must.append(_match("language" if "-" in lang else "language_primary", lang))
        if self.indexed_after is not None:
            must.append(models.FieldCondition(key="indexed_at_ts", range=models.Range(gt=self.indexed_after)))
        return models.Filter(must=must) if must else None


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _doc_filter(doc_id: uuid.UUID, *, from_chunk: int | None = None) -> models.Filter:
    must: list[models.Condition] = [_match("doc_id", str(doc_id))]
    if from_chunk is not None:
        must.append(models.FieldCondition(key="chunk_index", range=models.Range(gte=from_chunk)))
    return models.Filter(must=must)


class VectorStore:
    def __init__(self, client: QdrantClient, collection: str, *, serialize: bool) -> None:
        self._client = client
        self.collection = collection
        self.is_local = serialize
        # The local mode is not safe for concurrent use from several threads; a server is.
        self._lock: threading.Lock | None = threading.Lock() if serialize else None

    @classmethod
    def open(
        cls, *, url: str | None, api_key: str | None, path: str, collection: str, timeout: float = 30.0
    ) -> VectorStore:
        if url:
            client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
            return cls(client, collection, serialize=False)
        try:
            client = QdrantClient(path=path)
        except RuntimeError as exc:  # the local store is locked by another process
            raise ConfigurationError(
                f"the embedded vector store at {path} is in use by another process ({exc}); the embedded "
                "store serves one process only: run workers in that process or set CRAWLDEX_QDRANT_URL"
            ) from exc
        return cls(client, collection, serialize=True)

    def _guard(self) -> AbstractContextManager[Any]:
        return self._lock if self._lock is not None else nullcontext()

    async def _call(self, fn: Callable[[], T]) -> T:
        def run() -> T:
            with self._guard():
                try:
                    return fn()
                except (ConfigurationError, ValueError):
                    raise
                except Exception as exc:  # qdrant-client raises transport- and API-specific types
                    raise DependencyUnavailableError("vector store", f"{type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(run)

    async def ensure_collection(self, dimension: int) -> None:
        def run() -> None:
            if self._client.collection_exists(self.collection):
                info = self._client.get_collection(self.collection)
                vectors = info.config.params.vectors
                existing = vectors.get(DENSE) if isinstance(vectors, dict) else None
                if existing is None or existing.size != dimension:
                    found = existing.size if existing is not None else "no named 'dense' vector"
                    raise ConfigurationError(
                        f"Qdrant collection {self.collection!r} has dense size {found}, but the embedder "
                        f"produces {dimension}: use another CRAWLDEX_QDRANT_COLLECTION or re-create it"
                    )
                return
            self._client.create_collection(
                self.collection,
                vectors_config={DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
                sparse_vectors_config={KEYWORD: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            if not self.is_local:  # the local mode ignores payload indexes (and warns)
                for field in INDEXED_FIELDS:
                    self._client.create_payload_index(
                        self.collection, field, models.PayloadSchemaType.KEYWORD
                    )
                self._client.create_payload_index(
                    self.collection, "chunk_index", models.PayloadSchemaType.INTEGER
                )
                self._client.create_payload_index(
                    self.collection, "indexed_at_ts", models.PayloadSchemaType.FLOAT
                )

        await self._call(run)

    async def upsert(self, points: Sequence[IndexedPoint]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=str(p.id),
                vector={
                    DENSE: p.dense,
                    KEYWORD: models.SparseVector(indices=p.keyword.indices, values=p.keyword.values),
                },
                payload=p.payload,
            )
            for p in points
        ]
        await self._call(lambda: self._client.upsert(self.collection, points=structs, wait=True))

    async def delete_chunks_from(self, doc_id: uuid.UUID, first_stale_chunk: int) -> None:
        """Delete the document's points whose chunk index is ``first_stale_chunk`` or higher."""
        selector = models.FilterSelector(filter=_doc_filter(doc_id, from_chunk=first_stale_chunk))
        await self._call(lambda: self._client.delete(self.collection, points_selector=selector, wait=True))

    async def set_document_payload(self, doc_id: uuid.UUID, payload: dict[str, Any]) -> None:
        await self._call(
            lambda: self._client.set_payload(
                self.collection, payload=payload, points=_doc_filter(doc_id), wait=True
            )
        )

    async def count(self, doc_id: uuid.UUID | None = None) -> int:
        flt = _doc_filter(doc_id) if doc_id is not None else None
        return await self._call(
            lambda: self._client.count(self.collection, count_filter=flt, exact=True).count
        )

    async def search(
        self,
        *,
        dense: list[float] | None,
        keyword: SparseVector | None,
        point_filter: PointFilter,
        limit: int,
    ) -> tuple[list[ScoredPoint], list[ScoredPoint]]:
        """Rank by each given vector in one round trip; returns (dense hits, keyword hits)."""
        flt = point_filter.to_qdrant()
        requests: list[models.QueryRequest] = []
        if dense is not None:
            requests.append(
                models.QueryRequest(query=dense, using=DENSE, filter=flt, limit=limit, with_payload=True)
            )
        if keyword is not None and not keyword.is_empty:
            sparse = models.SparseVector(indices=keyword.indices, values=keyword.values)
            requests.append(
                models.QueryRequest(query=sparse, using=KEYWORD, filter=flt, limit=limit, with_payload=True)
            )
        if not requests:
            return [], []
        responses = await self._call(
            lambda: self._client.query_batch_points(self.collection, requests=requests)
        )
        ranked = [
            [ScoredPoint(id=str(p.id), score=p.score, payload=dict(p.payload or {})) for p in r.points]
            for r in responses
        ]
        dense_hits = ranked.pop(0) if dense is not None else []
        keyword_hits = ranked.pop(0) if ranked else []
        return dense_hits, keyword_hits

    async def health(self) -> None:
        await self._call(lambda: self._client.collection_exists(self.collection))

    def close(self) -> None:
        with self._guard():
            self._client.close()
