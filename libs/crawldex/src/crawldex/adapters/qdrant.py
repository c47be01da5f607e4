"""The vector store: one Qdrant collection holding a dense and a keyword (sparse BM25) vector per chunk.

A Qdrant server in production (``CRAWLDEX_QDRANT_URL``); without one, qdrant-client's embedded
local mode in ``CRAWLDEX_DATA_DIR``. The local mode keeps its data in this process only, which is why
the embedded mode runs the API and its queue consumers in one process.

qdrant-client is synchronous here on purpose: its local mode runs in the caller's thread either way,
so every call is moved off the event loop with ``asyncio.to_thread``.

In the local mode, dense and keyword queries are answered by ``LocalIndex``, a mirror of the
collection's vectors this store keeps beside it and updates on each of its writes: qdrant-client scores
every stored vector in Python per query. Writes, payloads and counts go to qdrant-client.

The local mode stores each collection in a SQLite file and commits every point in its own transaction.
This store switches that file to write-ahead logging (a setting SQLite keeps in the file): in the
default rollback-journal mode each commit costs several fsyncs (the journal, the database, the
journal's removal), with WAL one; SQLite's default synchronous=FULL keeps every commit durable. An
upsert takes half the time (docs/benchmarks.md). Copy the collection directory whole, with its
``-wal`` file, or stop the process first.

A write of many points (a batch's upsert, its stale tails) still commits once a point there, each commit
an fsync. While this store writes, qdrant-client's per-point transactions join one, committed when the
write ends (`_OneTransaction`): one fsync a write. qdrant-client validates a whole request before it stores
any point, and stores each point before applying it in memory, so a write that fails part-way keeps (commits)
the points it applied, as qdrant-client's own per-point commits would; should the file lose them anyway (the
commit fails, or SQLite rolls the transaction back), the store reads the collection again from the file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models
from qdrant_client.local.persistence import STORAGE_FILE_NAME, CollectionPersistence

from crawldex.adapters.local_index import AtLeast, Condition, LocalIndex, LocalPoint, Match
from crawldex.errors import ConfigurationError, CrawldexError, DependencyUnavailableError
from crawldex.keyword import DEFAULT_STEMMER, NO_STEMMER, SparseVector

log = logging.getLogger(__name__)

DENSE = "dense"
KEYWORD = "keyword"
DOC_ID = "doc_id"  # payload field: the page (document) a chunk belongs to
# Payload fields that filters use; a Qdrant server gets a keyword index on each.
INDEXED_FIELDS = (DOC_ID, "domain", "crawl_id", "language", "language_primary", "url_prefixes")
NUMERIC_FIELDS = ("chunk_index", "indexed_at_ts")
# The collection metadata key recording the keyword stemmer its vectors were built with.
STEMMER_METADATA_KEY = "crawldex_keyword_stemmer"
# The local keyword index reads the collection in pages of this many points when the store opens.
SCROLL_PAGE = 5000
# A Qdrant server refuses a request body over its service.max_request_size_mb (32 MiB by default, 400 Bad
# Request); a write whose points may add up to more than this is sent in several requests.
DEFAULT_MAX_REQUEST_BYTES = 24 * 2**20
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")

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

    def conditions(self) -> list[Condition]:
        """The conditions, once for both Qdrant's filter and the local keyword index."""
        found: list[Condition] = []
        if self.domain:
            found.append(Match("domain", self.domain))
        if self.url_prefix:
            found.append(Match("url_prefixes", self.url_prefix))
        if self.crawl_id:
            found.append(Match("crawl_id", self.crawl_id))
        if self.language:
            lang = self.language.lower()
            found.append(Match("language" if "-" in lang else "language_primary", lang))
        if self.indexed_after is not None:
            found.append(AtLeast("indexed_at_ts", self.indexed_after, inclusive=False))
        return found

    def to_qdrant(self) -> models.Filter | None:
        conditions = self.conditions()
        return _qdrant_filter(conditions) if conditions else None


def _qdrant_filter(conditions: Sequence[Condition]) -> models.Filter:
    must: list[models.Condition] = []
    for c in conditions:
        if isinstance(c, Match):
            must.append(models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value)))
        else:
            bound = models.Range(gte=c.bound) if c.inclusive else models.Range(gt=c.bound)
            must.append(models.FieldCondition(key=c.key, range=bound))
    return models.Filter(must=must)


def _check_outside_stale_tails(
    points: Sequence[IndexedPoint], stale_tails: Sequence[tuple[uuid.UUID, int]]
) -> None:
    if not points or not stale_tails:
        return
    first_stale: dict[str, int] = {}
    for doc_id, first in stale_tails:
        key = str(doc_id)
        first_stale[key] = min(first, first_stale.get(key, first))
    for point in points:
        tail = first_stale.get(str(point.payload.get(DOC_ID)))
        if tail is not None and int(point.payload.get("chunk_index", -1)) >= tail:
            raise ValueError(
                f"point {point.id} (chunk {point.payload.get('chunk_index')} of document "
                f"{point.payload.get(DOC_ID)}) is in the stale tail deleted from chunk {tail} in the same write"
            )


def _json_bytes_bound(value: Any) -> int:
    """At least the bytes of ``value`` in the JSON qdrant-client sends (pydantic's: UTF-8, with only quotes,
    backslashes and control characters escaped): a string's UTF-8 and its quotes, a byte more for each
    quote or backslash and five more for each control character (escaped in up to six); 32 a number."""
    if isinstance(value, str):
        return (
            len(value.encode("utf-8", "surrogatepass"))
            + 2
            + value.count('"')
            + value.count("\\")
            + 5 * len(_CONTROL_CHARACTER.findall(value))
        )
    if isinstance(value, dict):
        return 2 + sum(_json_bytes_bound(key) + _json_bytes_bound(item) + 2 for key, item in value.items())
    if isinstance(value, list | tuple):
        return 2 + sum(_json_bytes_bound(item) + 1 for item in value)
    return 32  # a number, a boolean or null


def _point_bytes_bound(point: IndexedPoint) -> int:
    """At least the bytes of ``point`` in a write request: its id, dense vector (a float each, up to 24
    characters and a comma), keyword vector (an index and a value each) and payload, with the keys around
    them."""
    return 128 + 25 * len(point.dense) + 36 * len(point.keyword.indices) + _json_bytes_bound(point.payload)


def _request_slices(points: Sequence[IndexedPoint], max_bytes: int) -> list[Sequence[IndexedPoint]]:
    """``points`` in their order, cut into runs whose bound stays within ``max_bytes`` (a point larger
    than that alone): one run for a batch of pages up to CRAWLDEX_INDEX_BATCH_MAX_CHARS (~14.5 bytes of
    points a character of markdown), several for a page of millions of characters."""
    slices: list[Sequence[IndexedPoint]] = []
    start, size = 0, 0
    for position, point in enumerate(points):
        point_bytes = _point_bytes_bound(point)
        if position > start and size + point_bytes > max_bytes:
            slices.append(points[start:position])
            start, size = position, 0
        size += point_bytes
    if start < len(points):
        slices.append(points[start:])
    return slices


def _point_structs(points: Sequence[IndexedPoint]) -> list[models.PointStruct]:
    return [
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


def _doc_conditions(doc_id: uuid.UUID, *, from_chunk: int | None = None) -> list[Condition]:
    found: list[Condition] = [Match(DOC_ID, str(doc_id))]
    if from_chunk is not None:
        found.append(AtLeast("chunk_index", from_chunk, inclusive=True))
    return found


def _local_point(point_id: models.ExtendedPointId, vector: Any, payload: dict[str, Any] | None) -> LocalPoint:
    sparse = vector.get(KEYWORD) if isinstance(vector, dict) else None
    dense = vector.get(DENSE) if isinstance(vector, dict) else None
    dense = dense if isinstance(dense, list) else None
    if not isinstance(sparse, models.SparseVector):
        return LocalPoint(str(point_id), [], [], payload or {}, has_keyword=False, dense=dense)
    return LocalPoint(str(point_id), sparse.indices, sparse.values, payload or {}, dense=dense)


class VectorStore:
    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        serialize: bool,
        local_path: Path | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self._client = client
        self._max_request_bytes = max_request_bytes
        self.collection = collection
        self.is_local = serialize
        self._local_path = local_path
        # The local mode is not safe for concurrent use from several threads; a server is.
        self._lock: threading.Lock | None = threading.Lock() if serialize else None
        # Local mode only: built when the collection is known (ensure_collection), dropped when a write
        # fails part-way (it may no longer mirror the collection) and rebuilt by the next search.
        self._local: LocalIndex | None = None
        self._local_wanted = False
        # The stemmer the collection's keyword vectors were built with (known after ensure_collection).
        self.keyword_stemmer = DEFAULT_STEMMER

    @classmethod
    def open(
        cls,
        *,
        url: str | None,
        api_key: str | None,
        path: str,
        collection: str,
        timeout: float = 30.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> VectorStore:
        if url:
            client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
            return cls(client, collection, serialize=False, max_request_bytes=max_request_bytes)
        try:
            client = QdrantClient(path=path)
        except RuntimeError as exc:  # the local store is locked by another process
            raise ConfigurationError(
                f"the embedded vector store at {path} is in use by another process ({exc}); the embedded "
                "store serves one process only: run workers in that process or set CRAWLDEX_QDRANT_URL"
            ) from exc
        return cls(client, collection, serialize=True, local_path=Path(path))

    @property
    def has_local_index(self) -> bool:
        """Whether queries are answered by the in-process index (the embedded store only)."""
        return self._local is not None

    def _guard(self) -> AbstractContextManager[Any]:
        return self._lock if self._lock is not None else nullcontext()

    async def _call(self, fn: Callable[[], T]) -> T:
        def run() -> T:
            with self._guard():
                try:
                    return fn()
                except (CrawldexError, ValueError):
                    raise
                except Exception as exc:  # qdrant-client raises transport- and API-specific types
                    raise DependencyUnavailableError("vector store", f"{type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(run)

    async def ensure_collection(self, dimension: int, keyword_stemmer: str = DEFAULT_STEMMER) -> None:
        """Create the collection, or check an existing one fits; learn the keyword stemmer it was built with.

        A new collection records ``keyword_stemmer`` in its metadata. An existing one keeps its own
        (``keyword_stemmer`` property): queries stemmed differently from the stored vectors would miss
        their words. A collection without the record predates stemming and is unstemmed.
        """

        def run() -> None:
            if self._client.collection_exists(self.collection):
                info = self._client.get_collection(self.collection)
                recorded = (info.config.metadata or {}).get(STEMMER_METADATA_KEY, NO_STEMMER)
                self.keyword_stemmer = str(recorded)
                if self.keyword_stemmer != keyword_stemmer:
                    log.warning(
                        "Qdrant collection %s was built with keyword stemmer %r, not the configured %r: "
                        "keyword vectors keep using %r; to change it, index into a new "
                        "CRAWLDEX_QDRANT_COLLECTION (crawldex reindex)",
                        self.collection,
                        self.keyword_stemmer,
                        keyword_stemmer,
                        self.keyword_stemmer,
                    )
                vectors = info.config.params.vectors
                existing = vectors.get(DENSE) if isinstance(vectors, dict) else None
                if existing is None or existing.size != dimension:
                    found = existing.size if existing is not None else "no named 'dense' vector"
                    raise ConfigurationError(
                        f"Qdrant collection {self.collection!r} has dense size {found}, but the embedder "
                        f"produces {dimension}: use another CRAWLDEX_QDRANT_COLLECTION or re-create it"
                    )
                if self.is_local:
                    self._open_local()
                return
            self._client.create_collection(
                self.collection,
                vectors_config={DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
                sparse_vectors_config={KEYWORD: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                metadata={STEMMER_METADATA_KEY: keyword_stemmer},
            )
            self.keyword_stemmer = keyword_stemmer
            if self.is_local:
                self._open_local()
            else:  # the local mode ignores payload indexes (and warns)
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

    def _open_local(self) -> None:
        """The local mode's collection is known: its storage in WAL mode, its vectors in a local index."""
        if self._local_path is not None:
            _use_write_ahead_log(self._local_path / "collection" / self.collection / STORAGE_FILE_NAME)
        self._local_wanted = True
        self._local = self._load_local_index()

    def _load_local_index(self) -> LocalIndex | None:
        """Read the collection's vectors into a new index (the caller holds the lock)."""
        info = self._client.get_collection(self.collection)
        sparse = (info.config.params.sparse_vectors or {}).get(KEYWORD)
        if sparse is None:
            log.warning("collection %s has no %r sparse vector: no local index", self.collection, KEYWORD)
            self._local_wanted = False
            return None
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        # The mirror computes cosine only; another distance leaves dense queries to qdrant-client.
        cosine = dense is not None and dense.distance == models.Distance.COSINE
        index = LocalIndex(
            idf=sparse.modifier == models.Modifier.IDF,
            keyword_fields=INDEXED_FIELDS,
            numeric_fields=NUMERIC_FIELDS,
            dimension=dense.size if dense is not None and cosine else None,
        )
        offset: models.ExtendedPointId | None = None
        while True:
            records, offset = self._client.scroll(
                self.collection,
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=[*INDEXED_FIELDS, *NUMERIC_FIELDS],
                with_vectors=[KEYWORD, DENSE] if cosine else [KEYWORD],
            )
            index.upsert((_local_point(r.id, r.vector, r.payload) for r in records), compact=False)
            if offset is None:
                break
        index.compact()
        return index

    def _local_index(self) -> LocalIndex | None:
        """The local index, rebuilt if a failed write dropped it (the caller holds the lock)."""
        if self._local is None and self._local_wanted:
            self._local = self._load_local_index()
        return self._local

    async def _write(self, write: Callable[[], Any], mirror: Callable[[LocalIndex], Any]) -> None:
        """Run a write against Qdrant, then the same write against the local index."""

        def run() -> None:
            try:
                with self._one_transaction():
                    write()
                if self._local is not None:
                    mirror(self._local)
            except BaseException:
                # The write may have been applied in part: the index is rebuilt from the collection.
                self._local = None
                raise

        await self._call(run)

    @contextmanager
    def _one_transaction(self) -> Iterator[None]:
        """The local mode's per-point commits made one, at the end (see the module doc; the caller holds
        the lock). Against a server, or if qdrant-client keeps its SQLite file elsewhere, nothing changes."""
        persistence = _persistence(self._client, self.collection) if self.is_local else None
        if persistence is None:
            yield
            return
        connection = persistence.storage
        if not connection.in_transaction:
            connection.execute("BEGIN")
        stand_in = _OneTransaction(connection)
        persistence.storage = stand_in  # type: ignore[assignment]  # duck-typed stand-in
        try:
            yield
        except BaseException:
            persistence.storage = connection
            self._after_failed_write(connection, wrote=stand_in.blocks > 0)
            raise
        persistence.storage = connection
        try:
            connection.commit()
        except sqlite3.Error:
            self._after_failed_write(connection, wrote=True)
            raise

    def _after_failed_write(self, connection: sqlite3.Connection, *, wrote: bool) -> None:
        """Memory and file in step again after a write failed part-way.

        qdrant-client applies a point in memory once it is stored. Each point's statements are undone on
        their own when they fail (a savepoint each, `_OneTransaction`), so what went before is committed,
        as per-point commits would have kept it. But should SQLite have rolled the whole transaction back
        (as it may on a full disk or an I/O error), or the commit fail, the file lacks points that memory
        holds (a delete's points would come back at the next start): the collection is then read again
        from the file.
        """
        kept = connection.in_transaction
        if kept:
            try:
                connection.commit()
            except sqlite3.Error:
                kept = False
        if not kept:
            connection.rollback()
            if wrote:
                self._reopen_local()

    def _reopen_local(self) -> None:
        """The embedded store read again from its files (the caller holds the lock); the local index is
        rebuilt from it by the next query."""
        if self._local_path is None:
            return
        log.warning("reopening the embedded store at %s after a failed write", self._local_path)
        self._local = None
        self._client.close()
        self._client = QdrantClient(path=str(self._local_path))

    async def upsert(self, points: Sequence[IndexedPoint]) -> None:
        await self.write_chunks(points, [])

    async def delete_chunks_from(self, doc_id: uuid.UUID, first_stale_chunk: int) -> None:
        """Delete the document's points whose chunk index is ``first_stale_chunk`` or higher."""
        await self.write_chunks([], [(doc_id, first_stale_chunk)])

    async def delete_stale_chunks(self, tails: Sequence[tuple[uuid.UUID, int]]) -> None:
        """`delete_chunks_from` for several documents (a batch's stale tails) in one write."""
        await self.write_chunks([], tails)

    async def write_chunks(
        self,
        points: Sequence[IndexedPoint],
        stale_tails: Sequence[tuple[uuid.UUID, int]],
        *,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Upsert ``points``, then delete each ``(doc_id, first_stale_chunk)`` document's points from that
        chunk index on (a page re-indexed into fewer chunks), as one write: one request to a Qdrant server
        (a batch update, whose operations apply in order, so a reader never sees a page without its
        chunks), one commit of the embedded store. Points that may add up to more than the store's
        request bound (a page of millions of characters) go to a server in several requests, in order,
        the deletion in the last, ``check`` called before each after the first (the pipeline's document
        locks: a write that outlived them stops there): a reader may then see such a page's new chunks
        beside its old ones until the last request, and until a retry if one fails; never the page without
        chunks.

        A point in its own document's stale tail is refused (ValueError), nothing written: the tail's ids
        are looked up before the upsert, so a store would keep such a point on disk that its local index
        and a Qdrant server drop."""
        _check_outside_stale_tails(points, stale_tails)
        stale = [_doc_conditions(doc_id, from_chunk=first) for doc_id, first in stale_tails]
        if not points and not stale:
            return
        # The embedded store has no request to bound: one write, one commit.
        slices = [points] if self.is_local else _request_slices(points, self._max_request_bytes)

        def write() -> None:
            requests: list[list[models.UpdateOperation]] = [
                [models.UpsertOperation(upsert=models.PointsList(points=_point_structs(run)))]
                for run in slices
                if run
            ] or [[]]
            selector = self._stale_selector(stale)
            if selector is not None:
                requests[-1].append(models.DeleteOperation(delete=selector))
            for position, operations in enumerate(requests):
                if position and check is not None:
                    check()
                if operations:
                    self._client.batch_update_points(self.collection, update_operations=operations, wait=True)

        def mirror(index: LocalIndex) -> None:
            index.upsert(
                LocalPoint(str(p.id), p.keyword.indices, p.keyword.values, p.payload, dense=p.dense)
                for p in points
            )
            for conditions in stale:
                index.delete(conditions)

        await self._write(write, mirror)

    def _stale_selector(
        self, stale: Sequence[Sequence[Condition]]
    ) -> models.FilterSelector | models.PointIdsList | None:
        """The points of the stale tails (the caller holds the lock): by id where the local index knows
        them, else by filter; None when there are none. The ids are the same before the upsert that goes
        with them as after it: the upsert writes a page's chunks below its first stale index."""
        if not stale:
            return None
        found = [self._matching_ids(conditions) for conditions in stale]
        if any(ids is None for ids in found):
            return models.FilterSelector(filter=models.Filter(should=[_qdrant_filter(c) for c in stale]))
        ids = [point for points in found if points for point in points]
        return models.PointIdsList(points=ids) if ids else None

    async def set_document_payload(self, doc_id: uuid.UUID, payload: dict[str, Any]) -> None:
        conditions = _doc_conditions(doc_id)

        def update() -> None:
            ids = self._matching_ids(conditions)
            if ids is None or ids:
                points = _qdrant_filter(conditions) if ids is None else ids
                self._client.set_payload(self.collection, payload=payload, points=points, wait=True)

        await self._write(update, lambda index: index.set_payload(conditions, payload))

    def _matching_ids(self, conditions: Sequence[Condition]) -> list[models.ExtendedPointId] | None:
        """The ids of the points meeting ``conditions`` from the local index (the caller holds the lock);
        None without one. qdrant-client's local mode evaluates a filter by scanning every point in Python,
        so a write by filter (a re-indexed page's stale tail) costs O(collection); by ids it costs O(ids)."""
        index = self._local_index() if self.is_local else None
        if index is None or not index.supports(conditions):
            return None
        return list(index.matching_ids(conditions))

    async def count(self, doc_id: uuid.UUID | None = None) -> int:
        flt = _qdrant_filter(_doc_conditions(doc_id)) if doc_id is not None else None
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
        with_payload: bool = True,
        with_doc_id: bool = False,
    ) -> tuple[list[ScoredPoint], list[ScoredPoint]]:
        """Rank by each given vector in one round trip; returns (dense hits, keyword hits).

        ``with_payload=False`` leaves every hit's payload empty: a caller that keeps a few of many
        candidates (hybrid fusion) reads theirs with `payloads`, instead of copying every candidate's.
        ``with_doc_id`` then still gives each hit's ``doc_id`` (its page), for grouping chunks by page.
        """
        selector: bool | list[str] = True if with_payload else ([DOC_ID] if with_doc_id else False)
        conditions = point_filter.conditions()
        flt = _qdrant_filter(conditions) if conditions else None
        want_keyword = keyword is not None and not keyword.is_empty

        def run() -> tuple[list[ScoredPoint], list[ScoredPoint]]:
            index = self._local_index() if self.is_local else None
            if index is not None and not index.supports(conditions):
                index = None
            local_dense = dense is not None and index is not None and index.dimension is not None
            requests: list[models.QueryRequest] = []
            if dense is not None and not local_dense:
                requests.append(
                    models.QueryRequest(
                        query=dense, using=DENSE, filter=flt, limit=limit, with_payload=selector
                    )
                )
            if keyword is not None and want_keyword and index is None:
                sparse = models.SparseVector(indices=keyword.indices, values=keyword.values)
                requests.append(
                    models.QueryRequest(
                        query=sparse, using=KEYWORD, filter=flt, limit=limit, with_payload=selector
                    )
                )
            responses = (
                self._client.query_batch_points(self.collection, requests=requests) if requests else []
            )
            ranked = [
                [ScoredPoint(id=str(p.id), score=p.score, payload=dict(p.payload or {})) for p in r.points]
                for r in responses
            ]
            local_hits: list[list[tuple[str, float]]] = []
            if dense is not None and index is not None and local_dense:
                local_hits.append(index.search_dense(dense, conditions, limit))
            if keyword is not None and want_keyword and index is not None:
                local_hits.append(index.search(keyword.indices, keyword.values, conditions, limit))
            if with_payload:
                with_payloads = self._with_payloads(local_hits)
            elif with_doc_id and index is not None:
                with_payloads = [self._with_doc_ids(index, hits) for hits in local_hits]
            else:
                with_payloads = [
                    [ScoredPoint(id=i, score=score, payload={}) for i, score in hits] for hits in local_hits
                ]
            dense_hits = (with_payloads.pop(0) if local_dense else ranked.pop(0)) if dense is not None else []
            if keyword is not None and want_keyword:
                keyword_hits = with_payloads.pop(0) if index is not None else ranked.pop(0)
            else:
                keyword_hits = []
            return dense_hits, keyword_hits

        return await self._call(run)

    async def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of the given points, in one read; a point that no longer exists is left out."""
        if not ids:
            return {}
        return await self._call(lambda: self._read_payloads(ids))

    def _read_payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records = self._client.retrieve(self.collection, ids=list(ids), with_payload=True)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def _with_payloads(self, rankings: list[list[tuple[str, float]]]) -> list[list[ScoredPoint]]:
        """The local index's rankings with each point's payload, read in one retrieve."""
        ids = list(dict.fromkeys(i for hits in rankings for i, _ in hits))
        if not ids:
            return [[] for _ in rankings]
        payloads = self._read_payloads(ids)
        if len(payloads) < len(ids):  # cannot happen while every write goes through this store
            log.error("the local index names points the collection lacks: rebuilding it")
            self._local = None
        return [
            [ScoredPoint(id=i, score=score, payload=payloads[i]) for i, score in hits if i in payloads]
            for hits in rankings
        ]

    def _with_doc_ids(self, index: LocalIndex, hits: list[tuple[str, float]]) -> list[ScoredPoint]:
        """The hits with their ``doc_id`` from the local index's column, or their payload without one."""
        doc_ids = index.single_values([i for i, _ in hits], DOC_ID)
        missing = [i for (i, _), doc_id in zip(hits, doc_ids, strict=True) if doc_id is None]
        read = self._read_payloads(missing) if missing else {}
        points: list[ScoredPoint] = []
        for (i, score), doc_id in zip(hits, doc_ids, strict=True):
            if doc_id is not None:
                points.append(ScoredPoint(id=i, score=score, payload={DOC_ID: doc_id}))
            elif i in read:
                points.append(ScoredPoint(id=i, score=score, payload={DOC_ID: read[i].get(DOC_ID)}))
        return points

    async def health(self) -> None:
        await self._call(lambda: self._client.collection_exists(self.collection))

    def close(self) -> None:
        with self._guard():
            self._local = None
            self._local_wanted = False
            self._client.close()


class _OneTransaction:
    """Stands in for a collection's SQLite connection while one write runs: qdrant-client's
    ``with connection:`` around each point's statements commits nothing, so they join the transaction the
    store commits when the write ends (`VectorStore._one_transaction`). Each such block is a savepoint,
    undone on its own if it fails, as its own transaction was. Anything else goes to the connection."""

    SAVEPOINT = "crawldex_point"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.blocks = 0  # blocks entered: points (or deletes) written in this transaction

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute(f"SAVEPOINT {self.SAVEPOINT}")
        self.blocks += 1
        return self._connection

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # A transaction SQLite rolled back itself has no savepoint left to go back to or release.
        if exc_type is not None and self._connection.in_transaction:
            self._connection.execute(f"ROLLBACK TO {self.SAVEPOINT}")
        if self._connection.in_transaction:
            self._connection.execute(f"RELEASE {self.SAVEPOINT}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _persistence(client: QdrantClient, collection: str) -> CollectionPersistence | None:
    """The SQLite persistence of a local-mode collection, where qdrant-client keeps it; None if it does not
    (another version's layout, an in-memory collection): the store then works as it is."""
    local = getattr(client, "_client", None)
    collections = getattr(local, "collections", None)
    found = collections.get(collection) if isinstance(collections, dict) else None
    persistence = getattr(found, "storage", None)
    if isinstance(persistence, CollectionPersistence) and isinstance(
        getattr(persistence, "storage", None), sqlite3.Connection
    ):
        return persistence
    return None


def _use_write_ahead_log(storage: Path) -> None:
    """Switch qdrant-client's SQLite file of a collection to WAL (see the module doc); SQLite keeps the
    mode in the file, so this changes nothing after the first time. The store works either way."""
    if not storage.is_file():  # qdrant-client laid its files out differently: leave them be
        log.warning("embedded Qdrant storage not found at %s: its journal mode is left as it is", storage)
        return
    try:
        with closing(sqlite3.connect(storage)) as connection:
            mode = str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    except sqlite3.Error as exc:
        log.warning("could not switch %s to write-ahead logging: %s", storage, exc)
        return
    if mode != "wal":
        log.warning("%s stays in journal mode %r: SQLite refused write-ahead logging", storage, mode)
