"""The index-worker takes the index jobs queued behind the one it dequeued and indexes their pages as one
batch (real RQ and Redis, PostgreSQL, the model, the embedded store); each job still ends on its own."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from crawldex.adapters.embedder import Embedder, EmbedderInfo, Vector
from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.queue import INDEX_JOB, REMOVE_JOB, EnqueuedJob, JobQueue
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.db.crawls import CrawlRepository
from crawldex.errors import DependencyUnavailableError, EmbedderError
from crawldex.jobs import JobLoop, WorkerRuntime, install_runtime
from crawldex.models import PageDocument, utc_now
from crawldex.services import Services
from crawldex.urls import canonicalize_url, document_id
from crawldex.worker import CrawldexWorker, worker_name

REFUSED = "a text the embedding server refuses"


class RefusingEmbedder:
    """The real model, except for texts that carry ``REFUSED``: those fail the whole call, as TEI fails a
    request one of whose inputs it rejects (413 or 422)."""

    def __init__(self, model: LocalModelEmbedder) -> None:
        self._model = model

    @property
    def info(self) -> EmbedderInfo:
        return self._model.info

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        if any(REFUSED in text for text in texts):
            raise EmbedderError("TEI 413: one input is too large", status_code=413)
        return await self._model.embed_documents(texts)

    async def embed_query(self, text: str) -> Vector:
        return await self._model.embed_query(text)

    async def health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class WatchedCrawls(CrawlRepository):
    """The real repository, counting the deliveries of each write; with ``refuse_batches``, a write of
    several fails as PostgreSQL going away for a moment would fail it."""

    def __init__(self, *args: Any, refuse_batches: bool = False) -> None:
        super().__init__(*args)
        self.writes: list[int] = []
        self.refuse_batches = refuse_batches

    async def record_deliveries(self, deliveries: Any, **kwargs: Any) -> None:
        self.writes.append(len(deliveries))
        if self.refuse_batches and len(deliveries) > 1:
            raise DependencyUnavailableError("postgresql", "connection reset by peer")
        await super().record_deliveries(deliveries, **kwargs)


def page(number: int, text: str = "", **fields: Any) -> PageDocument:
    return PageDocument(
        url=f"https://batch.example/page/{number}",
        markdown=f"# Page {number}\n\n{text or f'Page number {number} is about batches of index jobs.'}",
        **fields,
    )


def start_runtime(settings: Settings, embedder: Embedder) -> WorkerRuntime:
    loop = JobLoop()
    runtime = WorkerRuntime(loop, index=loop.run(Services.start(settings, embedder=embedder)))
    install_runtime(runtime)
    return runtime


@pytest.fixture
def runtime(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[WorkerRuntime]:
    started = start_runtime(settings, embedder)
    yield started
    install_runtime(None)
    started.close()


@pytest.fixture
def refusing_runtime(settings: Settings, embedder: LocalModelEmbedder) -> Iterator[WorkerRuntime]:
    """The runtime with `RefusingEmbedder` and no retries: a refused page's job fails at once."""
    started = start_runtime(settings.model_copy(update={"index_job_retries": 0}), RefusingEmbedder(embedder))
    yield started
    install_runtime(None)
    started.close()


def work(connection: redis.Redis, batch_pages: int, max_chars: int = 1_000_000) -> Queue:
    queue = Queue(QUEUE_INDEXING, connection=connection, serializer=JSONSerializer)
    worker = CrawldexWorker(
        [queue],
        connection=connection,
        name=worker_name("batch-test"),
        index_batch_pages=batch_pages,
        index_batch_max_chars=max_chars,
    )
    worker.work(burst=True, with_scheduler=False)
    assert queue.started_job_registry.count == 0
    assert queue.intermediate_queue.get_job_ids() == []
    return queue


def result_of(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == "finished", job.latest_result()
    result = job.return_value()
    assert isinstance(result, dict)
    return result


def indexed_hash(runtime: WorkerRuntime, document: PageDocument) -> str | None:
    doc_id = document_id(canonicalize_url(document.url))
    record = runtime.run(runtime.index.documents.get(doc_id))
    return record.content_hash if record is not None else None


def test_queued_pages_are_indexed_in_batches_and_each_job_ends_on_its_own(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    pages = [page(number) for number in range(5)]
    jobs = [runtime.index.queue.enqueue_index(p) for p in pages]

    work(clean_redis, batch_pages=4)

    results = [result_of(clean_redis, job.job_id) for job in jobs]
    assert [r["batch_pages"] for r in results] == [4, 4, 4, 4, 1]
    assert [r["status"] for r in results] == ["indexed"] * 5
    assert [r["url"] for r in results] == [p.url for p in pages]
    for document, result in zip(pages, results, strict=True):
        assert indexed_hash(runtime, document) == result["content_hash"]
    assert runtime.run(runtime.index.store.count()) == sum(r["chunk_count"] for r in results)


def test_a_batch_holds_no_more_markdown_than_its_limit(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    pages = [page(number, "x" * 100) for number in range(5)]  # 110 characters of markdown each
    large = page(9, "y" * 1000)
    jobs = [runtime.index.queue.enqueue_index(p) for p in [*pages, large]]

    queue = work(clean_redis, batch_pages=8, max_chars=300)

    results = [result_of(clean_redis, job.job_id) for job in jobs]
    # Two pages a batch, the rest left queued for the next; a page over the limit alone.
    assert [r["batch_pages"] for r in results] == [2, 2, 2, 2, 1, 1]
    assert [r["status"] for r in results] == ["indexed"] * 6
    assert queue.intermediate_queue.get_job_ids() == []


def _flip(text: str) -> PageDocument:
    """A version of a page sent without a delivery id (`/api/index`): its content names its job."""
    return PageDocument(url="https://flip.example/page", markdown=f"Version {text}.")


def test_a_page_that_changes_back_while_its_first_job_waits_ends_on_its_last_version(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    """A, then B, then A again, all still queued: the third joins the first job, which takes its receipt
    time, so B, received before it, is superseded."""
    queue = runtime.index.queue
    first = queue.enqueue_index(_flip("alpha mentions albatrosses"))
    queue.enqueue_index(_flip("beta mentions bitterns"))
    again = queue.enqueue_index(_flip("alpha mentions albatrosses"))
    assert (again.job_id, again.deduplicated) == (first.job_id, True)

    work(clean_redis, batch_pages=8)
    assert indexed_hash(runtime, _flip("x")) == result_of(clean_redis, first.job_id)["content_hash"]


def test_a_page_that_changes_back_while_its_first_job_runs_gets_a_job_of_its_own(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    """The first job of A already taken by a worker (it has read its page): A again is not joined to it but
    queued behind B, and the index ends on A."""
    queue = runtime.index.queue
    first = queue.enqueue_index(_flip("alpha mentions albatrosses"))
    # As a worker's dequeue leaves it: off the queue, started.
    clean_redis.lrem(f"rq:queue:{QUEUE_INDEXING}", 0, first.job_id)
    clean_redis.hset(Job.key_for(first.job_id), "status", "started")
    second = queue.enqueue_index(_flip("beta mentions bitterns"))
    again = queue.enqueue_index(_flip("alpha mentions albatrosses"))
    assert not again.deduplicated
    assert again.job_id.startswith(first.job_id + "-")
    assert Queue(QUEUE_INDEXING, connection=clean_redis).get_job_ids() == [second.job_id, again.job_id]

    work(clean_redis, batch_pages=8)
    assert result_of(clean_redis, second.job_id)["status"] == "indexed"
    assert indexed_hash(runtime, _flip("x")) == result_of(clean_redis, again.job_id)["content_hash"]


def test_a_batch_of_one_job_at_a_time_is_the_old_worker(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    jobs = [runtime.index.queue.enqueue_index(page(number)) for number in range(3)]
    work(clean_redis, batch_pages=1)
    assert [result_of(clean_redis, job.job_id)["batch_pages"] for job in jobs] == [1, 1, 1]


def test_versions_of_one_page_in_one_batch_are_indexed_in_their_order(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    first_seen = utc_now() - timedelta(minutes=5)
    older = page(1, "The first version of the page.", received_at=first_seen)
    newer = page(1, "The second version, which must win.", received_at=first_seen + timedelta(minutes=1))
    queue = runtime.index.queue
    jobs = [
        queue.enqueue_index(older, delivery_id="first"),
        queue.enqueue_index(page(2)),
        queue.enqueue_index(newer, delivery_id="second"),
    ]

    work(clean_redis, batch_pages=8)

    older_result, _, newer_result = (result_of(clean_redis, job.job_id) for job in jobs)
    assert older_result["status"] == newer_result["status"] == "indexed"
    assert older_result["batch_pages"] == 3
    assert indexed_hash(runtime, newer) == newer_result["content_hash"] != older_result["content_hash"]
    hits = runtime.run(runtime.index.store.count())
    assert hits == newer_result["chunk_count"] + result_of(clean_redis, jobs[1].job_id)["chunk_count"]


def test_a_removal_ends_the_batch_and_runs_after_the_pages_queued_before_it(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    queue = runtime.index.queue
    gone, other, later = page(1), page(2), page(3)
    indexing = [queue.enqueue_index(gone), queue.enqueue_index(other)]
    removal = queue.enqueue_removal(gone.url, None, received_at=utc_now())
    after = queue.enqueue_index(later)

    work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job.job_id)["batch_pages"] for job in indexing] == [2, 2]
    assert result_of(clean_redis, removal.job_id)["status"] == "gone"
    assert result_of(clean_redis, after.job_id)["batch_pages"] == 1  # the removal ended the batch
    doc_id = document_id(canonicalize_url(gone.url))
    record = runtime.run(runtime.index.documents.get(doc_id))
    assert record is not None
    assert record.status == "gone"


def test_a_batch_that_fails_is_indexed_again_one_job_at_a_time(
    refusing_runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    """One page the embedder refuses fails its own job; the pages batched with it are still indexed."""
    queue = refusing_runtime.index.queue
    good = [queue.enqueue_index(page(1)), queue.enqueue_index(page(3))]
    refused = queue.enqueue_index(page(2, REFUSED))
    work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job.job_id)["batch_pages"] for job in good] == [1, 1]
    job = Job.fetch(refused.job_id, connection=clean_redis, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    latest = job.latest_result()
    assert latest is not None
    assert "TEI 413" in (latest.exc_string or "")


class DownEmbedder(RefusingEmbedder):
    """An embedding server that is down: every call fails as the TEI adapter fails once its own retries
    are spent."""

    def __init__(self, model: LocalModelEmbedder) -> None:
        super().__init__(model)
        self.calls = 0

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        self.calls += 1
        raise EmbedderError("TEI 503: overloaded (gave up after 6 attempts)", status_code=503, transient=True)


def test_a_batch_that_meets_an_outage_fails_its_jobs_at_once_and_each_is_retried(
    settings: Settings,
    embedder: LocalModelEmbedder,
    clean_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Indexing the pages one by one would meet the same outage once a page: one call, not one plus three."""
    down = DownEmbedder(embedder)
    runtime = start_runtime(settings.model_copy(update={"index_job_retries": 2}), down)
    try:
        queue = runtime.index.queue
        jobs = [queue.enqueue_index(page(number)) for number in range(3)]
        work(clean_redis, batch_pages=8)

        assert down.calls == 1
        for enqueued in jobs:
            job = Job.fetch(enqueued.job_id, connection=clean_redis, serializer=JSONSerializer)
            assert job.get_status() == "scheduled"  # a retry after its wait, as RQ retries a failed job
            assert job.retries_left == 1
        assert caplog.text.count("the batch this job was in failed: embedder: TEI 503") == 3
    finally:
        install_runtime(None)
        runtime.close()


@contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """This process's SIGTERM and SIGINT handlers as they were, after a worker installed its own."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def three_pages_one_refused(
    runtime: WorkerRuntime, connection: redis.Redis
) -> tuple[list[EnqueuedJob], CrawldexWorker]:
    """Three queued pages, the second one the embedder refuses, and a worker to batch them."""
    queue = runtime.index.queue
    jobs = [queue.enqueue_index(page(1)), queue.enqueue_index(page(2, REFUSED)), queue.enqueue_index(page(3))]
    rq_queue = Queue(QUEUE_INDEXING, connection=connection, serializer=JSONSerializer)
    worker = CrawldexWorker(
        [rq_queue], connection=connection, name=worker_name("stop-test"), index_batch_pages=8
    )
    return jobs, worker


class StopAskedOnFirstPageAlone(RefusingEmbedder):
    """`RefusingEmbedder` that sends this process SIGTERM (Kubernetes stopping the pod) while it embeds the
    first page indexed on its own, after its batch failed."""

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        if len(texts) == 1 and not getattr(self, "signalled", False):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)
        return await super().embed_documents(texts)


def test_a_warm_stop_puts_back_the_jobs_that_would_index_on_their_own(
    settings: Settings, embedder: LocalModelEmbedder, clean_redis: redis.Redis
) -> None:
    """A batch that failed on a page is indexed again job by job, which the grace period was not sized
    for: asked to stop, the worker finishes the job it is on and puts the rest back, no try spent."""
    runtime = start_runtime(
        settings.model_copy(update={"index_job_retries": 2}), StopAskedOnFirstPageAlone(embedder)
    )
    try:
        with signal_handlers_restored():
            (first, refused, last), worker = three_pages_one_refused(runtime, clean_redis)
            with_ttl = Job.key_for(last.job_id)
            clean_redis.hset(with_ttl, "ttl", 600)  # as RQ's enqueue(..., ttl=600) leaves a job
            clean_redis.expire(with_ttl, 600)
            worker.work(burst=True, with_scheduler=False)
        rq_queue = worker.queues[0]
        assert result_of(clean_redis, first.job_id)["batch_pages"] == 1  # performed: it was under way
        assert rq_queue.get_job_ids() == [refused.job_id, last.job_id]  # back at the front, in order
        assert rq_queue.started_job_registry.count == 0
        assert 0 < clean_redis.ttl(with_ttl) <= 600  # expires again, as queued
        assert clean_redis.ttl(Job.key_for(refused.job_id)) == -1  # enqueued without one
        for put_back in (refused, last):
            job = Job.fetch(put_back.job_id, connection=clean_redis, serializer=JSONSerializer)
            assert job.get_status() == "queued"
            assert job.retries_left == 2  # no try spent

        work(clean_redis, batch_pages=8)  # another worker takes them as any queued job
        assert result_of(clean_redis, last.job_id)["chunk_count"] >= 1
    finally:
        install_runtime(None)
        runtime.close()


class ColdStopOnFirstPageAlone(RefusingEmbedder):
    """Two SIGTERMs, more than a second apart (RQ ignores a second one sooner), while the first page
    indexed on its own is embedded: a cold shutdown."""

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        if len(texts) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.2)  # noqa: ASYNC251  # the second signal must come over a second later
            os.kill(os.getpid(), signal.SIGTERM)
        return await super().embed_documents(texts)


def test_a_cold_stop_stops_the_batch_at_once(
    settings: Settings, embedder: LocalModelEmbedder, clean_redis: redis.Redis
) -> None:
    """RQ's perform_job turns the cold stop's SystemExit into the job's failure; the batch must not go
    on to its next job. The jobs not performed are left started, for RQ's clean-up once their leases lapse."""
    runtime = start_runtime(
        settings.model_copy(update={"index_job_retries": 2}), ColdStopOnFirstPageAlone(embedder)
    )
    try:
        jobs, worker = three_pages_one_refused(runtime, clean_redis)
        with signal_handlers_restored(), pytest.raises(SystemExit):
            worker.work(burst=True, with_scheduler=False)
        statuses = [
            Job.fetch(job.job_id, connection=clean_redis, serializer=JSONSerializer).get_status()
            for job in jobs
        ]
        assert statuses[1:] == ["started", "started"]  # never performed
        assert statuses[0] != "finished"  # the job the stop interrupted
    finally:
        install_runtime(None)
        runtime.close()


def test_a_page_whose_input_the_embedder_refuses_is_not_retried(
    settings: Settings, embedder: LocalModelEmbedder, clean_redis: redis.Redis
) -> None:
    runtime = start_runtime(settings.model_copy(update={"index_job_retries": 3}), RefusingEmbedder(embedder))
    try:
        refused = runtime.index.queue.enqueue_index(page(2, REFUSED))
        work(clean_redis, batch_pages=8)
        job = Job.fetch(refused.job_id, connection=clean_redis, serializer=JSONSerializer)
        assert job.get_status() == "failed"  # at once: the same input would be refused again
    finally:
        install_runtime(None)
        runtime.close()


@pytest.mark.parametrize("refuse_batches", [False, True], ids=["one-write", "each-job-on-its-own"])
def test_a_batch_records_its_crawl_pages_in_one_write(
    runtime: WorkerRuntime, clean_redis: redis.Redis, refuse_batches: bool
) -> None:
    crawls = WatchedCrawls(runtime.index.database, refuse_batches=refuse_batches)
    runtime.index.crawls = crawls
    queue = runtime.index.queue
    jobs = [queue.enqueue_index(page(number, crawl_id="crawl-batch")) for number in range(3)]
    jobs.append(queue.enqueue_index(page(3)))  # of no crawl: nothing to record

    work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job.job_id)["batch_pages"] for job in jobs] == [4] * 4
    # Refused, the batch's write is done again by each job, for its own page.
    assert crawls.writes == ([3, 1, 1, 1] if refuse_batches else [3])
    summary = runtime.run(crawls.summary("crawl-batch"))
    assert summary is not None
    assert (summary.pages_indexed, summary.pages_pending, summary.pages_failed) == (3, 0, 0)


def _taking_worker(connection: redis.Redis, *queues: Queue) -> CrawldexWorker:
    return CrawldexWorker(
        list(queues), connection=connection, name=worker_name("take-test"), index_batch_pages=8
    )


def _first_job(connection: redis.Redis, queue: Queue) -> Job:
    """The job a worker's own dequeue would start the batch with."""
    dequeued = Queue.dequeue_any([queue], None, connection=connection, serializer=JSONSerializer)
    assert dequeued is not None
    return dequeued[0]


def _queued_pages(redis_url: str, connection: redis.Redis, numbers: Sequence[int]) -> list[str]:
    queue = JobQueue(connection, Settings(redis_url=redis_url))
    return [queue.enqueue_index(page(number)).job_id for number in numbers]


def test_no_jobs_are_taken_for_a_batch_while_a_queue_served_first_has_some(
    clean_redis: redis.Redis, redis_url: str
) -> None:
    ids = _queued_pages(redis_url, clean_redis, range(3))
    served_first = Queue("served-first", connection=clean_redis, serializer=JSONSerializer)
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = _taking_worker(clean_redis, served_first, indexing)
    first = _first_job(clean_redis, indexing)
    served_first.enqueue(REMOVE_JOB, "https://batch.example/gone", None)

    assert worker._more_index_jobs(first, indexing) == []
    assert indexing.job_ids == ids[1:]

    clean_redis.delete(served_first.key)
    taken = worker._more_index_jobs(first, indexing)
    assert [(job.id, origin.name) for job, origin in taken] == [
        (ids[1], QUEUE_INDEXING),
        (ids[2], QUEUE_INDEXING),
    ]
    assert indexing.intermediate_queue.get_job_ids() == ids
    assert indexing.job_ids == []


@pytest.mark.parametrize("lmove", [True, False], ids=["one-script-call", "rq-dequeue-before-redis-6.2"])
def test_a_job_of_another_kind_ends_the_batch_and_those_behind_it_stay_queued(
    clean_redis: redis.Redis, redis_url: str, lmove: bool
) -> None:
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    before = _queued_pages(redis_url, clean_redis, [1, 2])
    removal = indexing.enqueue(REMOVE_JOB, "https://batch.example/gone", None)
    after = _queued_pages(redis_url, clean_redis, [3, 4])
    worker = _taking_worker(clean_redis, indexing)
    first = _first_job(clean_redis, indexing)

    # Without LMOVE (Redis before 6.2), `_more_index_jobs` takes the jobs through RQ's dequeue.
    taken = worker._more_index_jobs(first, indexing) if lmove else worker._dequeue_index_jobs(7)

    assert [job.id for job, _ in taken] == [before[1], removal.id]
    assert indexing.job_ids == after
    assert indexing.intermediate_queue.get_job_ids() == [*before, removal.id]


def test_jobs_taken_behind_a_job_of_another_kind_run_after_it_one_by_one(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    queue = runtime.index.queue
    first = [queue.enqueue_index(page(1)).job_id, queue.enqueue_index(page(2)).job_id]
    # The index jobs' id prefix (which no other job is given) on a removal: taken with them, then found out.
    odd = indexing.enqueue(REMOVE_JOB, page(2).url, None, utc_now().isoformat(), job_id="index-but-a-removal")
    after = [queue.enqueue_index(page(3)).job_id, queue.enqueue_index(page(4)).job_id]

    work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in first] == [2, 2]
    assert result_of(clean_redis, odd.id)["status"] == "gone"
    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in after] == [1, 1]
    ended = [
        Job.fetch(job_id, connection=clean_redis, serializer=JSONSerializer).ended_at
        for job_id in [*first, odd.id, *after]
    ]
    assert None not in ended
    assert ended == sorted(end for end in ended if end is not None)


def test_a_job_that_vanished_from_the_queue_is_passed_over(clean_redis: redis.Redis, redis_url: str) -> None:
    ids = _queued_pages(redis_url, clean_redis, range(4))
    clean_redis.delete(Job.key_for(ids[2]))
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = _taking_worker(clean_redis, indexing)

    taken = worker._more_index_jobs(_first_job(clean_redis, indexing), indexing)

    assert [job.id for job, _ in taken] == [ids[1], ids[3]]
    assert indexing.intermediate_queue.get_job_ids() == ids  # RQ's clean-up drops the vanished one's id


def test_a_worker_serving_several_queues_leaves_no_batched_job_behind_for_rqs_clean_up(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    rescrape = Queue(QUEUE_RESCRAPE, connection=clean_redis, serializer=JSONSerializer)
    worker = CrawldexWorker(  # as the embedded mode's consumer serves them
        [indexing, rescrape], connection=clean_redis, name=worker_name("two-queues"), index_batch_pages=8
    )

    worker.work(burst=True, with_scheduler=False)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in ids] == [3, 3, 3]
    assert indexing.intermediate_queue.get_job_ids() == []
    # RQ's clean-up of the intermediate list (a first pass, then one a minute later) finds nothing to retry.
    indexing.intermediate_queue.cleanup(worker, indexing)
    for job_id in ids:
        clean_redis.set(indexing.intermediate_queue.get_first_seen_key(job_id), 0)
    indexing.intermediate_queue.cleanup(worker, indexing)
    assert [
        Job.fetch(job_id, connection=clean_redis, serializer=JSONSerializer).get_status() for job_id in ids
    ] == ["finished"] * 3


@pytest.mark.parametrize("lmove", [True, False], ids=["one-script-call", "rq-dequeue-before-redis-6.2"])
def test_a_job_queued_twice_runs_once_in_its_batch(
    runtime: WorkerRuntime, clean_redis: redis.Redis, lmove: bool
) -> None:
    if not lmove:  # the server version RQ reads once and keeps on the connection: Redis 6.0, no LMOVE
        setattr(clean_redis, "__rq_redis_server_version", (6, 0, 0))
    ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
    indexing = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    clean_redis.rpush(indexing.key, ids[1])  # queued again while still queued, as RQ can re-queue a job

    queue = work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in ids] == [3, 3, 3]
    assert len(Job.fetch(ids[1], connection=clean_redis, serializer=JSONSerializer).results()) == 1
    assert queue.failed_job_registry.count == 0


def test_a_job_whose_data_cannot_be_read_fails_on_its_own(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
    clean_redis.hset(Job.key_for(ids[0]), "data", b"not what the serializer wrote")

    queue = work(clean_redis, batch_pages=8)

    # RQ failed it as it fails any job it cannot run, and scheduled its retry; the worker went on.
    broken = Job.fetch(ids[0], connection=clean_redis, serializer=JSONSerializer)
    assert broken.get_status() == "scheduled"
    assert queue.scheduled_job_registry.get_job_ids() == [ids[0]]
    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in ids[1:]] == [2, 2]


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def job_record(connection: redis.Redis, job_id: str) -> tuple[set[str], str, bool, bool]:
    """What RQ leaves of an ended job: its hash's fields, its status, whether its latest result is a
    success, and whether it is in the finished registry; its execution records must be gone."""
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    result = job.latest_result()
    status = job.get_status()
    assert result is not None
    assert status is not None
    assert not connection.keys(f"rq:execution:{job_id}:*")
    finished = job_id in Queue(QUEUE_INDEXING, connection=connection).finished_job_registry.get_job_ids()
    return (
        {text(field) for field in connection.hkeys(job.key)},
        status.value,
        result.type == result.Type.SUCCESSFUL,
        finished,
    )


def test_a_batchs_jobs_end_recorded_as_rq_records_a_job_run_alone(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    alone = runtime.index.queue.enqueue_index(page(0)).job_id
    work(clean_redis, batch_pages=1)
    batched = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(1, 5)]
    queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = CrawldexWorker([queue], connection=clean_redis, name=worker_name("record"), index_batch_pages=8)

    worker.work(burst=True, with_scheduler=False)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in batched] == [4] * 4
    expected = job_record(clean_redis, alone)
    assert expected[1:] == ("finished", True, True)
    assert [job_record(clean_redis, job_id) for job_id in batched] == [expected] * 4
    assert clean_redis.ttl(Job.key_for(batched[0])) > 0  # kept for the result's TTL, as RQ keeps it
    assert queue.started_job_registry.count == 0
    assert int(clean_redis.hget(worker.key, "successful_job_count") or 0) == 4
    assert float(clean_redis.hget(worker.key, "total_working_time") or 0) > 0


def test_a_job_of_a_batch_that_another_job_depends_on_queues_it_when_it_ends(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
    rescrape = Queue(QUEUE_RESCRAPE, connection=clean_redis, serializer=JSONSerializer)
    dependent = rescrape.enqueue("builtins.len", "waits", depends_on=ids[1])
    assert dependent.get_status() == "deferred"

    work(clean_redis, batch_pages=8)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in ids] == [3, 3, 3]
    assert dependent.get_status() == "queued"
    assert rescrape.get_job_ids() == [dependent.id]


class StatusReadingEmbedder(RefusingEmbedder):
    """The real model; each call first reads the status of the jobs in ``job_ids`` from Redis."""

    def __init__(self, model: LocalModelEmbedder, connection: redis.Redis) -> None:
        super().__init__(model)
        self._connection = connection
        self.job_ids: list[str] = []
        self.seen: list[list[str]] = []
        self.key_ttls: list[list[int]] = []

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        self.seen.append(
            [text(self._connection.hget(Job.key_for(job_id), "status")) for job_id in self.job_ids]
        )
        self.key_ttls.append([self._connection.ttl(Job.key_for(job_id)) for job_id in self.job_ids])
        return await super().embed_documents(texts)


def test_the_jobs_of_a_batch_are_started_from_when_they_are_taken(
    settings: Settings, embedder: LocalModelEmbedder, clean_redis: redis.Redis
) -> None:
    reading = StatusReadingEmbedder(embedder, clean_redis)
    runtime = start_runtime(settings, reading)
    try:
        reading.job_ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
        work(clean_redis, batch_pages=8)
    finally:
        install_runtime(None)
        runtime.close()

    assert reading.seen == [["started"] * 3]  # the batch's one model call, all three jobs taken
    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in reading.job_ids] == [3, 3, 3]


def test_the_keys_of_a_batchs_jobs_are_made_persistent_when_the_batch_starts(
    settings: Settings, embedder: LocalModelEmbedder, clean_redis: redis.Redis
) -> None:
    """RQ's `Job.perform` removes a job key's expiry before it runs the job; a batch does it for every job
    it takes, when it starts them."""
    reading = StatusReadingEmbedder(embedder, clean_redis)
    runtime = start_runtime(settings, reading)
    try:
        reading.job_ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
        for job_id in reading.job_ids:
            clean_redis.expire(Job.key_for(job_id), 3600)  # as a job enqueued with a ttl has
        work(clean_redis, batch_pages=8)
    finally:
        install_runtime(None)
        runtime.close()

    assert reading.key_ttls == [[-1, -1, -1]]  # no expiry left while the batch runs
    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in reading.job_ids] == [3, 3, 3]


class CurrentJobReadingWorker(CrawldexWorker):
    """The real worker; as each job's success is handled, it reads the worker's current job from Redis."""

    current_jobs: list[str]

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        self.current_jobs.append(text(self.connection.hget(self.key, "current_job")))
        super().handle_job_success(job, queue, started_job_registry)


def test_a_batchs_first_job_is_the_workers_current_job_until_the_batch_ends(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    ids = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(3)]
    queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = CurrentJobReadingWorker(
        [queue], connection=clean_redis, name=worker_name("current"), index_batch_pages=8
    )
    worker.current_jobs = []

    worker.work(burst=True, with_scheduler=False)

    assert worker.current_jobs == [ids[0]] * 3  # what `rq info` shows
    assert clean_redis.hget(worker.key, "current_job") is None  # none once the batch has ended


def test_after_a_batched_job_fails_the_next_job_performed_is_the_workers_current_job(
    refusing_runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    """RQ clears the current job when it records a failure; the jobs performed after it name theirs again."""
    queue = refusing_runtime.index.queue
    ids = [queue.enqueue_index(page(1, REFUSED)).job_id]
    ids += [queue.enqueue_index(page(number)).job_id for number in (2, 3)]
    rq_queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = CurrentJobReadingWorker(
        [rq_queue], connection=clean_redis, name=worker_name("after-failure"), index_batch_pages=8
    )
    worker.current_jobs = []

    worker.work(burst=True, with_scheduler=False)

    assert Job.fetch(ids[0], connection=clean_redis, serializer=JSONSerializer).get_status() == "failed"
    assert worker.current_jobs == [ids[1], ids[1]]
    assert clean_redis.hget(worker.key, "current_job") is None


class FailingBatchRecordWorker(CrawldexWorker):
    """The real worker, except that writing a batch's record fails as a Redis connection dropped while the
    transaction is built would; RQ's own per-job record then runs as usual."""

    def _record_success(self, job: Job, execution: Any, pipeline: redis.client.Pipeline) -> None:
        raise redis.ConnectionError("Connection closed by server.")


def test_a_batch_whose_record_fails_is_recorded_job_by_job_as_rq_records_them(
    runtime: WorkerRuntime, clean_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    alone = runtime.index.queue.enqueue_index(page(0)).job_id
    work(clean_redis, batch_pages=1)
    batched = [runtime.index.queue.enqueue_index(page(number)).job_id for number in range(1, 4)]
    queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = FailingBatchRecordWorker(
        [queue], connection=clean_redis, name=worker_name("fallback"), index_batch_pages=8
    )

    worker.work(burst=True, with_scheduler=False)

    assert [result_of(clean_redis, job_id)["batch_pages"] for job_id in batched] == [3] * 3
    assert [job_record(clean_redis, job_id) for job_id in batched] == [job_record(clean_redis, alone)] * 3
    assert queue.started_job_registry.count == 0
    assert int(clean_redis.hget(worker.key, "successful_job_count") or 0) == 3
    assert "recording them one by one" in caplog.text


def stored_call(connection: redis.Redis, job_id: str) -> tuple[str | None, list[Any]]:
    """The function and arguments in a job's hash, as a worker would read them."""
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    return job.func_name, list(job.args)


@pytest.mark.parametrize("batch_pages", [1, 8], ids=["alone", "batched"])
def test_a_finished_index_job_keeps_its_page_but_not_its_markdown(
    runtime: WorkerRuntime, clean_redis: redis.Redis, batch_pages: int
) -> None:
    long_text = " ".join(f"{number * 7919 % 100_003:x}" for number in range(3000))  # compresses ~2x, not 100x
    pages = [page(number, long_text, title=f"Page {number}") for number in range(3)]
    jobs = [runtime.index.queue.enqueue_index(p, delivery_id=f"delivery-{n}") for n, p in enumerate(pages)]
    queued_size = max(len(clean_redis.hget(Job.key_for(job.job_id), "data") or b"") for job in jobs)

    work(clean_redis, batch_pages=batch_pages)

    for job, document in zip(jobs, pages, strict=True):
        assert result_of(clean_redis, job.job_id)["status"] == "indexed"
        function, (stored, change_event_id) = stored_call(clean_redis, job.job_id)
        assert function == INDEX_JOB
        assert stored == {k: v for k, v in document.model_dump(mode="json").items() if k != "markdown"}
        assert change_event_id is None
        assert len(clean_redis.hget(Job.key_for(job.job_id), "data") or b"") < queued_size / 10
        view = runtime.index.queue.get_job(job.job_id)
        assert view is not None
        assert view.status == "finished"
    # The same delivery again is still the finished job (deduplicated), not a new one.
    again = runtime.index.queue.enqueue_index(pages[0], delivery_id="delivery-0")
    assert again.deduplicated
    assert again.job_id == jobs[0].job_id


def test_a_failed_index_job_keeps_its_markdown_for_a_requeue(
    refusing_runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    refused = page(2, REFUSED)
    job = refusing_runtime.index.queue.enqueue_index(refused)
    work(clean_redis, batch_pages=8)
    assert Job.fetch(job.job_id, connection=clean_redis, serializer=JSONSerializer).get_status() == "failed"
    assert stored_call(clean_redis, job.job_id)[1][0]["markdown"] == refused.markdown


class DroppingSuccessRecordWorker(CrawldexWorker):
    """The real worker, except that the connection drops once as RQ records a job run alone as finished: RQ
    then records that job failed and schedules its retry, from the same job object."""

    dropped = False

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        if self.dropped:
            super().handle_job_success(job, queue, started_job_registry)
            return
        self.dropped = True
        connection = self.connection
        real_pipeline = connection.pipeline

        def dropping_pipeline(*args: Any, **kwargs: Any) -> redis.client.Pipeline:
            pipeline = real_pipeline(*args, **kwargs)

            def execute(raise_on_error: bool = True) -> list[Any]:
                pipeline.reset()
                raise redis.ConnectionError("Connection closed by server.")

            pipeline.execute = execute  # type: ignore[method-assign]
            return pipeline

        connection.pipeline = dropping_pipeline  # type: ignore[method-assign]
        try:
            super().handle_job_success(job, queue, started_job_registry)
        finally:
            del connection.pipeline


def test_a_job_whose_finished_record_fails_is_retried_with_its_page(
    runtime: WorkerRuntime, clean_redis: redis.Redis
) -> None:
    document = page(1)
    job_id = runtime.index.queue.enqueue_index(document).job_id
    queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    worker = DroppingSuccessRecordWorker([queue], connection=clean_redis, name=worker_name("drop"))

    worker.work(burst=True, with_scheduler=False)

    job = Job.fetch(job_id, connection=clean_redis, serializer=JSONSerializer)
    assert job.get_status() == "scheduled"  # RQ's failure record: a retry
    assert stored_call(clean_redis, job_id)[1][0]["markdown"] == document.markdown
    time.sleep(1.1)  # the retry interval (conftest: 1 s)
    retrying = CrawldexWorker([queue], connection=clean_redis, name=worker_name("retry"))
    retrying.work(burst=True, with_scheduler=True)
    assert result_of(clean_redis, job_id)["status"] == "indexed"  # the first try's outcome: it wrote the page
    assert "markdown" not in stored_call(clean_redis, job_id)[1][0]
