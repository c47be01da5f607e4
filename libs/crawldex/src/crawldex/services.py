"""Composition of the core: builds every service a process needs from `Settings`, once.

Heavy, loop-independent parts (the in-process model, the vector store, the tokenizer) can be shared
between event loops of one process (the embedded mode's API loop and its consumer thread's loop);
loop-bound parts (database engine, async Redis, the TEI HTTP client) are made per loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import redis.asyncio as aioredis

from crawldex.adapters.embedder import Embedder, EmbedderInfo
from crawldex.adapters.fetching import PageFetcher
from crawldex.adapters.firecrawl import FirecrawlScraper
from crawldex.adapters.local_model import BUNDLED_MODEL_ID, LocalModelEmbedder
from crawldex.adapters.qdrant import VectorStore
from crawldex.adapters.queue import JobQueue, connect_async_redis, connect_redis
from crawldex.adapters.redis_lock import RedisDocumentLock
from crawldex.adapters.tei import TEIEmbedder
from crawldex.chunking import Chunker, load_tokenizer
from crawldex.config import Settings
from crawldex.crawls import ReceivedPagesRecorder
from crawldex.db.change_events import ChangeEventRepository
from crawldex.db.crawls import CrawlRepository
from crawldex.db.database import Database
from crawldex.db.repository import CrawlEventRepository, DocumentRepository
from crawldex.errors import ConfigurationError, DependencyUnavailableError
from crawldex.keyword import NO_STEMMER, BM25Encoder
from crawldex.operations import DiscardOperations, OperationWriter
from crawldex.pipeline import IndexingPipeline
from crawldex.search import Fusion, GroupBy, SearchDefaults, SearchService
from crawldex.telemetry.metrics import TEI_RESPONSES

log = logging.getLogger(__name__)
HEALTH_CHECK_TIMEOUT_SECONDS = 5.0
RECORD_FLUSH_SECONDS = 10  # at shutdown, for the received pages still in line (`ReceivedPagesRecorder`)


def index_signature(settings: Settings, info: EmbedderInfo, keyword_stemmer: str) -> str:
    """Everything besides the page that decides what its points hold; a change re-embeds every page."""
    # The stemmer is named only when it is not "none", so pages indexed before stemming keep their signature.
    return "|".join(
        str(part)
        for part in (
            "v1",
            settings.qdrant_url or "embedded",
            settings.qdrant_collection,
            info.model_id,
            info.dimension,
            settings.tokenizer_path or "bundled",
            settings.chunk_tokens,
            settings.chunk_overlap_tokens,
            settings.bm25_k1,
            settings.bm25_b,
            settings.bm25_avg_doc_tokens,
            *([f"stem={keyword_stemmer}"] if keyword_stemmer != NO_STEMMER else []),
        )
    )


async def _make_embedder(settings: Settings) -> Embedder:
    if settings.tei_url:
        return await TEIEmbedder.connect(
            settings, on_response=lambda code: TEI_RESPONSES.labels(str(code)).inc()
        )
    return await asyncio.to_thread(
        LocalModelEmbedder.load,
        model_name=settings.model_name,
        device=settings.model_device,
        batch_size=settings.model_batch_size,
    )


@dataclass
class Services:
    settings: Settings
    embedder: Embedder
    store: VectorStore
    chunker: Chunker
    bm25: BM25Encoder
    database: Database
    documents: DocumentRepository
    crawl_events: CrawlEventRepository
    change_events: ChangeEventRepository
    crawls: CrawlRepository
    received_pages: ReceivedPagesRecorder  # the webhooks' pages, concurrent deliveries written together
    queue: JobQueue
    async_redis: aioredis.Redis
    pipeline: IndexingPipeline
    search: SearchService
    operations: OperationWriter | DiscardOperations
    owns_shared: bool
    owns_embedder: bool

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        share_from: Services | None = None,
        migrate: bool | None = None,
        embedder: Embedder | None = None,
    ) -> Services:
        """Build and check everything; raises `ConfigurationError` with a clear message if it cannot work.

        ``embedder`` supplies a ready one (a model already loaded in this process); ``share_from``
        reuses another loop's model, store and chunker.
        """
        owns_embedder = False
        if (
            embedder is None
            and share_from is not None
            and isinstance(share_from.embedder, LocalModelEmbedder)
        ):
            embedder = share_from.embedder  # a loaded model serves every loop; an HTTP client does not
        if embedder is None:
            embedder = await _make_embedder(settings)
            owns_embedder = True
        info = embedder.info
        if settings.tei_url and settings.tokenizer_path is None and info.model_id != BUNDLED_MODEL_ID:
            raise ConfigurationError(
                f"TEI serves {info.model_id}, but chunks would be counted with the bundled {BUNDLED_MODEL_ID} "
                "tokenizer: set CRAWLDEX_TOKENIZER_PATH to the served model's tokenizer.json"
            )
        opened: VectorStore | None = None
        try:
            if share_from is not None:
                store, chunker = share_from.store, share_from.chunker
            else:
                tokenizer = load_tokenizer(settings.tokenizer_path)
                chunker = Chunker(
                    tokenizer,
                    chunk_tokens=settings.chunk_tokens,
                    overlap_tokens=settings.chunk_overlap_tokens,
                    max_input_tokens=info.max_input_tokens,
                )
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                store = opened = open_store(settings)
                await store.ensure_collection(info.dimension, settings.keyword_stemmer)
            if migrate if migrate is not None else (settings.migrate_on_start and share_from is None):
                await _upgrade(settings.effective_database_url)
        except BaseException:
            # A start that fails (the database does not answer) must not keep the embedded store locked, or
            # the model loaded, in a process that goes on (and may start again).
            if opened is not None:
                opened.close()
            if owns_embedder:
                await embedder.aclose()
            raise
        database = Database.connect(settings.effective_database_url, pool_size=settings.database_pool_size)
        operations: OperationWriter | DiscardOperations
        if share_from is not None:
            operations = share_from.operations
        elif settings.operation_metrics_enabled:
            operations = OperationWriter(
                settings.effective_database_url, retention_days=settings.operation_metrics_retention_days
            )
        else:
            operations = DiscardOperations()
        bm25 = bm25_encoder(settings, store)
        async_redis = connect_async_redis(settings.redis_url)
        documents = DocumentRepository(database)
        # A dead holder's lock frees itself as its job's lease does (3 missed heartbeats), and a job waits
        # for it far less than its own timeout: better to fail and retry than to time out.
        lock = RedisDocumentLock(
            async_redis,
            lease_seconds=settings.worker_heartbeat_seconds * 3,
            wait_seconds=min(60.0, settings.index_job_timeout_seconds / 4),
        )
        pipeline = IndexingPipeline(
            chunker=chunker,
            embedder=embedder,
            store=store,
            documents=documents,
            bm25=bm25,
            lock=lock,
            index_signature=index_signature(settings, info, bm25.stemmer),
            operations=operations,
        )
        search = make_search_service(embedder, store, settings)
        crawls = CrawlRepository(database)
        return cls(
            settings=settings,
            embedder=embedder,
            store=store,
            chunker=chunker,
            bm25=bm25,
            database=database,
            documents=documents,
            crawl_events=CrawlEventRepository(database),
            change_events=ChangeEventRepository(database),
            crawls=crawls,
            received_pages=ReceivedPagesRecorder(crawls),
            queue=JobQueue(connect_redis(settings.redis_url), settings, async_connection=async_redis),
            async_redis=async_redis,
            pipeline=pipeline,
            search=search,
            operations=operations,
            owns_shared=share_from is None,
            owns_embedder=owns_embedder,
        )

    async def health(self, only: Collection[str] | None = None) -> dict[str, str]:
        """Per dependency, checked concurrently: "ok" or "unavailable" (the reason goes to the log only:
        health endpoints are unauthenticated and must not show hosts, users or driver messages)."""
        checks: dict[str, Callable[[], Awaitable[None]]] = {
            "redis": lambda: asyncio.to_thread(self.queue.health),
            "database": self.database.health,
            "vector_store": self.store.health,
            "embedder": self.embedder.health,
        }
        names = [name for name in checks if only is None or name in only]

        async def check(name: str) -> str:
            try:
                await asyncio.wait_for(checks[name](), timeout=HEALTH_CHECK_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("health: %s did not answer within %ss", name, HEALTH_CHECK_TIMEOUT_SECONDS)
                return "unavailable"
            except DependencyUnavailableError as exc:
                log.warning("health: %s", exc)
                return "unavailable"
            return "ok"

        results = await asyncio.gather(*(check(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self.received_pages.flush(), RECORD_FLUSH_SECONDS)
        except TimeoutError:
            log.error(
                "received pages still unwritten after %d s at shutdown: left to their jobs",
                RECORD_FLUSH_SECONDS,
            )
        await self.database.dispose()
        await self.queue.aclose()
        await self.async_redis.aclose()
        self.queue.connection.close()
        if self.owns_embedder:
            await self.embedder.aclose()
        if self.owns_shared:
            self.store.close()
            await asyncio.to_thread(self.operations.close)


def open_store(settings: Settings) -> VectorStore:
    """The Qdrant server at CRAWLDEX_QDRANT_URL, else the embedded store in the data directory."""
    return VectorStore.open(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        path=str(settings.qdrant_path),
        collection=settings.qdrant_collection,
        max_request_bytes=int(settings.qdrant_max_request_mb * 2**20),
    )


def search_defaults(settings: Settings) -> SearchDefaults:
    return SearchDefaults(
        rrf_k=settings.search_rrf_k,
        fusion=Fusion(settings.search_fusion),
        vector_weight=settings.search_vector_weight,
        keyword_weight=settings.search_keyword_weight,
        candidates=settings.search_candidates,
        group_by=GroupBy(settings.search_group_by),
    )


def bm25_encoder(settings: Settings, store: VectorStore) -> BM25Encoder:
    """The keyword encoder: the configured BM25 parameters, the collection's own stemmer."""
    return BM25Encoder(
        k1=settings.bm25_k1,
        b=settings.bm25_b,
        avg_doc_tokens=settings.bm25_avg_doc_tokens,
        stemmer=store.keyword_stemmer,
    )


def make_search_service(embedder: Embedder, store: VectorStore, settings: Settings) -> SearchService:
    return SearchService(
        embedder=embedder,
        store=store,
        bm25=bm25_encoder(settings, store),
        defaults=search_defaults(settings),
    )


@dataclass
class SearchServices:
    """What a search needs and nothing more (the operator CLI): the embedder and the vector store."""

    embedder: Embedder
    store: VectorStore
    search: SearchService

    @classmethod
    async def start(cls, settings: Settings) -> SearchServices:
        embedder = await _make_embedder(settings)
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            store = open_store(settings)
        except BaseException:
            await embedder.aclose()
            raise
        try:
            await store.ensure_collection(embedder.info.dimension, settings.keyword_stemmer)
        except BaseException:
            store.close()
            await embedder.aclose()
            raise
        return cls(embedder=embedder, store=store, search=make_search_service(embedder, store, settings))

    async def aclose(self) -> None:
        self.store.close()
        await self.embedder.aclose()


async def _upgrade(database_url: str) -> None:
    # Imported here, not with the module: Alembic and its templates are loaded only by a process that
    # migrates, not by every worker of a deployment whose migration Job does it (docs/architecture.md).
    from crawldex.db.migrate import upgrade

    await upgrade(database_url)


def make_fetcher(settings: Settings) -> PageFetcher:
    """Firecrawl's scrape API when configured, else the built-in fetcher (with its SSRF guard)."""
    if settings.firecrawl_url:
        return FirecrawlScraper.from_settings(settings)
    # Imported here: its HTML parsers are loaded only where pages are fetched, not in index workers.
    from crawldex.adapters.web_fetcher import BuiltinFetcher

    return BuiltinFetcher.from_settings(settings)


@dataclass
class RescrapeServices:
    """What a rescrape job needs: no model, no vector store (only index workers embed and write)."""

    settings: Settings
    database: Database
    change_events: ChangeEventRepository
    crawls: CrawlRepository
    queue: JobQueue
    fetcher: PageFetcher
    operations: OperationWriter | DiscardOperations

    @property
    def firecrawl(self) -> FirecrawlScraper | None:
        """The Firecrawl client (crawl reconciliation needs it); None without CRAWLDEX_FIRECRAWL_URL."""
        return self.fetcher if isinstance(self.fetcher, FirecrawlScraper) else None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        migrate: bool | None = None,
        operations: OperationWriter | DiscardOperations | None = None,
    ) -> RescrapeServices:
        if migrate if migrate is not None else settings.migrate_on_start:
            await _upgrade(settings.effective_database_url)
        database = Database.connect(settings.effective_database_url, pool_size=settings.database_pool_size)
        if operations is None:
            operations = (
                OperationWriter(
                    settings.effective_database_url, retention_days=settings.operation_metrics_retention_days
                )
                if settings.operation_metrics_enabled
                else DiscardOperations()
            )
        return cls(
            settings=settings,
            database=database,
            change_events=ChangeEventRepository(database),
            crawls=CrawlRepository(database),
            queue=JobQueue(connect_redis(settings.redis_url), settings),
            fetcher=make_fetcher(settings),
            operations=operations,
        )

    async def aclose(self, *, close_operations: bool = True) -> None:
        await self.fetcher.aclose()
        await self.database.dispose()
        self.queue.connection.close()
        if close_operations:
            await asyncio.to_thread(self.operations.close)
