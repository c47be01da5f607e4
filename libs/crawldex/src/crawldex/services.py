"""Composition of the core: builds every service a process needs from `Settings`, once.

Heavy, loop-independent parts (the in-process model, the vector store, the tokenizer) can be shared
between event loops of one process (the embedded mode's API loop and its consumer thread's loop);
loop-bound parts (database engine, async Redis, the TEI HTTP client) are made per loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from crawldex.adapters.embedder import Embedder
from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.qdrant import VectorStore
from crawldex.adapters.queue import JobQueue, connect_redis
from crawldex.adapters.redis_lock import RedisDocumentLock
from crawldex.adapters.tei import TEIEmbedder
from crawldex.chunking import Chunker, load_tokenizer
from crawldex.config import Settings
from crawldex.db.database import Database
from crawldex.db.migrate import upgrade
from crawldex.db.repository import CrawlEventRepository, DocumentRepository
from crawldex.errors import DependencyUnavailableError
from crawldex.keyword import BM25Encoder
from crawldex.pipeline import IndexingPipeline
from crawldex.search import Fusion, SearchDefaults, SearchService

log = logging.getLogger(__name__)


async def _make_embedder(settings: Settings) -> Embedder:
    if settings.tei_url:
        return await TEIEmbedder.connect(settings)
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
    queue: JobQueue
    async_redis: aioredis.Redis
    pipeline: IndexingPipeline
    search: SearchService
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
            store = VectorStore.open(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
                path=str(settings.qdrant_path),
                collection=settings.qdrant_collection,
            )
            await store.ensure_collection(info.dimension)
        if migrate if migrate is not None else (settings.migrate_on_start and share_from is None):
            await upgrade(settings.effective_database_url)
        database = Database.connect(settings.effective_database_url)
        bm25 = BM25Encoder(
            k1=settings.bm25_k1, b=settings.bm25_b, avg_doc_tokens=settings.bm25_avg_doc_tokens
        )
        async_redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        documents = DocumentRepository(database)
        lock = RedisDocumentLock(
            async_redis,
            timeout_seconds=settings.index_job_timeout_seconds,
            wait_seconds=settings.index_job_timeout_seconds,
        )
        pipeline = IndexingPipeline(
            chunker=chunker, embedder=embedder, store=store, documents=documents, bm25=bm25, lock=lock
        )
        search = SearchService(
            embedder=embedder,
            store=store,
            bm25=bm25,
            defaults=SearchDefaults(
                rrf_k=settings.search_rrf_k,
                fusion=Fusion(settings.search_fusion),
                vector_weight=settings.search_vector_weight,
                keyword_weight=settings.search_keyword_weight,
                candidates=settings.search_candidates,
            ),
        )
        return cls(
            settings=settings,
            embedder=embedder,
            store=store,
            chunker=chunker,
            bm25=bm25,
            database=database,
            documents=documents,
            crawl_events=CrawlEventRepository(database),
            queue=JobQueue(connect_redis(settings.redis_url), settings),
            async_redis=async_redis,
            pipeline=pipeline,
            search=search,
            owns_shared=share_from is None,
            owns_embedder=owns_embedder,
        )

    async def health(self) -> dict[str, str]:
        """Per dependency: "ok" or the reason it is not."""
        checks = {
            "redis": asyncio.to_thread(self.queue.health),
            "database": self.database.health(),
            "vector_store": self.store.health(),
            "embedder": self.embedder.health(),
        }
        report: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check, timeout=5)
                report[name] = "ok"
            except TimeoutError:
                report[name] = "unavailable: no answer within 5s"
            except DependencyUnavailableError as exc:
                report[name] = f"unavailable: {exc}"
        return report

    async def aclose(self) -> None:
        await self.database.dispose()
        await self.async_redis.aclose()
        self.queue.connection.close()
        if self.owns_embedder:
            await self.embedder.aclose()
        if self.owns_shared:
            self.store.close()
