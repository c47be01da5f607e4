"""JobQueue's own unique enqueue against RQ's: the same job in Redis, found and run by RQ's worker."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from rq import Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from crawldex.adapters.queue import INDEX_JOB, REFRESH_SEARCH_DEPTH, JobQueue, connect_async_redis
from crawldex.adapters.rate_limit import RateCharge, RateLimit, RateLimitedError, bucket_key
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.errors import DependencyUnavailableError
from crawldex.models import PageDocument
from crawldex.telemetry.tracing import TRACE_META_KEY

PAGE = PageDocument(url="https://queue.example/a", markdown="# A\n\nQueued once.", crawl_id="crawl-q")
META = {"crawl_id": "crawl-q", "webhook_id": "delivery-1", "source": "firecrawl"}
# Set at enqueue time, so never equal between two enqueues.
MOMENTS = {b"created_at", b"enqueued_at"}


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # No jitter: both enqueues below draw the same retry waits.
    return Settings(redis_url=redis_url, job_retry_jitter=0.0)


@pytest.fixture
async def async_connection(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = connect_async_redis(redis_url)  # the API's client: its commands packed by hiredis
    yield connection
    await connection.aclose()


@pytest.fixture
def queue(clean_redis: redis.Redis, settings: Settings, async_connection: aioredis.Redis) -> JobQueue:
    return JobQueue(clean_redis, settings, async_connection=async_connection)


def _inflated(data: bytes) -> bytes:
    """A job's data as RQ's worker reads it (`Job.restore`): inflated, or as it is when not a zlib stream."""
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def _comparable(fields: Mapping[Any, Any]) -> dict[bytes, object]:
    """A job's hash without its timestamps, its data inflated and parsed (ours is compressed by another
    deflate, or not at all when short, and its JSON has no spaces and keeps characters beyond ASCII as they
    are; RQ's worker reads both), and its meta parsed, without the trace context (ours carries one)."""
    comparable: dict[bytes, object] = {name: value for name, value in fields.items() if name not in MOMENTS}
    comparable[b"data"] = json.loads(_inflated(fields[b"data"]))
    meta = json.loads(fields[b"meta"])
    meta.pop(TRACE_META_KEY, None)
    comparable[b"meta"] = meta
    return comparable


@pytest.mark.parametrize("retries", [3, 0])  # with retries the hash has their intervals, without none
async def test_a_delivery_is_stored_as_rqs_own_unique_enqueue_stores_it(
    clean_redis: redis.Redis, settings: Settings, async_connection: aioredis.Redis, retries: int
) -> None:
    settings = settings.model_copy(update={"index_job_retries": retries})
    queue = JobQueue(clean_redis, settings, async_connection=async_connection)
    (enqueued,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)
    assert not enqueued.deduplicated
    ours = clean_redis.hgetall(Job.key_for(enqueued.job_id))

    clean_redis.delete(Job.key_for(enqueued.job_id), f"rq:queue:{QUEUE_INDEXING}", "rq:queues")
    Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer).enqueue(
        INDEX_JOB,
        PAGE.model_dump(mode="json"),
        None,
        job_id=enqueued.job_id,
        unique=True,
        job_timeout=settings.index_job_timeout_seconds,
        result_ttl=settings.job_result_ttl_seconds,
        failure_ttl=settings.job_failure_ttl_seconds,
        retry=Retry(max=retries, interval=list(settings.index_job_retry_intervals)) if retries else None,
        meta=META,
        description=f"index {PAGE.url}",
    )
    theirs = clean_redis.hgetall(Job.key_for(enqueued.job_id))
    await queue.aclose()

    assert set(ours) == set(theirs)
    assert _comparable(ours) == _comparable(theirs)
    assert clean_redis.lrange(f"rq:queue:{QUEUE_INDEXING}", 0, -1) == [enqueued.job_id.encode()]
    assert clean_redis.smembers("rq:queues") == {f"rq:queue:{QUEUE_INDEXING}".encode()}


async def test_rq_reads_the_job_and_its_worker_runs_it(queue: JobQueue, clean_redis: redis.Redis) -> None:
    (enqueued,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)

    job = Job.fetch(enqueued.job_id, connection=clean_redis, serializer=JSONSerializer)
    assert job.func_name == INDEX_JOB
    assert job.args == [PAGE.model_dump(mode="json"), None]
    assert job.get_status(refresh=False) == JobStatus.QUEUED
    assert job.origin == QUEUE_INDEXING
    assert job.retries_left == queue._settings.index_job_retries
    assert {k: v for k, v in job.meta.items() if k != TRACE_META_KEY} == META
    assert job.enqueued_at is not None

    rq_queue = Queue(QUEUE_INDEXING, connection=clean_redis, serializer=JSONSerializer)
    assert rq_queue.job_ids == [enqueued.job_id]
    # RQ's worker dequeues it; running crawldex's job function needs a worker runtime, so it fails here,
    # which is still RQ reading every field it needs to run, fail and retry the job.
    SimpleWorker([rq_queue], connection=clean_redis, serializer=JSONSerializer).work(burst=True)
    job.refresh()  # type: ignore[no-untyped-call]
    assert job.get_status() == JobStatus.SCHEDULED  # failed once, a retry is scheduled
    assert job.retries_left == queue._settings.index_job_retries - 1


async def test_a_long_pages_job_data_is_compressed_and_rq_reads_it_as_sent(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    prose = " ".join(f"Sentence {i} of a long page, über Größe {i % 7}, 索引 {i % 11}." for i in range(3000))
    page = PageDocument(url="https://queue.example/long", markdown=f"# Long\n\n{prose}", crawl_id="crawl-q")
    (enqueued,) = await queue.enqueue_pages([page], delivery_id="delivery-long", meta=META)

    stored = clean_redis.hget(Job.key_for(enqueued.job_id), "data")
    assert stored is not None
    assert len(stored) < len(page.markdown) / 2  # compressed, not stored as it came
    job = Job.fetch(enqueued.job_id, connection=clean_redis, serializer=JSONSerializer)
    assert job.args == [page.model_dump(mode="json"), None]


async def test_a_short_pages_job_data_is_stored_as_it_is_and_rq_reads_it(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    (enqueued,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-short", meta=META)

    stored = clean_redis.hget(Job.key_for(enqueued.job_id), "data")
    assert stored is not None
    assert json.loads(stored)[2] == [PAGE.model_dump(mode="json"), None]  # as it is: not a zlib stream
    job = Job.fetch(enqueued.job_id, connection=clean_redis, serializer=JSONSerializer)
    assert job.args == [PAGE.model_dump(mode="json"), None]


async def test_a_replayed_delivery_joins_its_job_and_a_new_one_is_queued(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    other = PageDocument(url="https://queue.example/b", markdown="# B")
    first = await queue.enqueue_pages([PAGE, other], delivery_id="delivery-1", meta=META)
    again = await queue.enqueue_pages([PAGE, other], delivery_id="delivery-1", meta=META)
    later = await queue.enqueue_pages([PAGE], delivery_id="delivery-2", meta=META)

    assert [job.deduplicated for job in first] == [False, False]
    assert [job.job_id for job in again] == [job.job_id for job in first]
    assert [job.deduplicated for job in again] == [True, True]
    assert not later[0].deduplicated
    assert later[0].job_id != first[0].job_id
    assert clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}") == 3


async def test_a_delivery_whose_job_failed_for_good_is_queued_again(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    (first,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)
    clean_redis.delete(f"rq:queue:{QUEUE_INDEXING}")
    clean_redis.hset(Job.key_for(first.job_id), "status", JobStatus.FAILED.value)

    (again,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)

    assert again.job_id == first.job_id
    assert not again.deduplicated
    assert clean_redis.hget(Job.key_for(first.job_id), "status") == b"queued"
    assert clean_redis.lrange(f"rq:queue:{QUEUE_INDEXING}", 0, -1) == [first.job_id.encode()]


async def test_content_without_a_delivery_id_joins_only_a_pending_job(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    (first,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
    (pending,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
    clean_redis.delete(f"rq:queue:{QUEUE_INDEXING}")
    clean_redis.hset(Job.key_for(first.job_id), "status", JobStatus.FINISHED.value)
    (after_it_ran,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)

    assert pending.deduplicated
    assert not after_it_ran.deduplicated
    assert clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}") == 1


async def test_content_whose_queued_job_a_worker_has_just_taken_gets_a_job_of_its_own(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    """A worker takes a job's id off its queue, then reads the job, then marks it started: in between the
    job still says queued, but joining it could rewrite data the worker has already read."""
    (first,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
    queue_key = f"rq:queue:{QUEUE_INDEXING}"
    taken = clean_redis.lmove(queue_key, f"{queue_key}:intermediate", "LEFT", "RIGHT")  # as RQ's dequeue
    data_when_taken = clean_redis.hget(Job.key_for(first.job_id), "data")

    (again,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)

    assert taken == first.job_id.encode()
    assert clean_redis.hget(Job.key_for(first.job_id), "status") == b"queued"
    assert not again.deduplicated
    assert again.job_id != first.job_id
    assert clean_redis.hget(Job.key_for(first.job_id), "data") == data_when_taken
    assert clean_redis.lrange(queue_key, 0, -1) == [again.job_id.encode()]


async def test_content_whose_queued_job_is_deep_in_a_backlog_gets_a_job_of_its_own(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    """The queued job is searched for among the queue's last REFRESH_SEARCH_DEPTH ids only: Redis runs
    nothing else while the script searches."""
    (first,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
    queue_key = f"rq:queue:{QUEUE_INDEXING}"
    clean_redis.rpush(queue_key, *(f"index-other-{i}" for i in range(REFRESH_SEARCH_DEPTH)))
    data_before = clean_redis.hget(Job.key_for(first.job_id), "data")

    (again,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)

    assert not again.deduplicated
    assert again.job_id != first.job_id
    assert clean_redis.hget(Job.key_for(first.job_id), "data") == data_before
    assert clean_redis.lindex(queue_key, 0) == first.job_id.encode()
    assert clean_redis.lindex(queue_key, -1) == again.job_id.encode()


@pytest.fixture
def lpos_denied_url(clean_redis: redis.Redis, redis_url: str) -> Iterator[str]:
    """The test database's URL as a user who may run every command but LPOS."""
    user = "crawldex-test-no-lpos"
    clean_redis.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-lpos"], reset=True
    )
    yield redis_url.replace("redis://", f"redis://{user}:unused@", 1)
    clean_redis.acl_deluser(user)


async def test_a_denied_queue_search_is_an_error_not_a_silent_join(
    lpos_denied_url: str, clean_redis: redis.Redis, settings: Settings
) -> None:
    """Only a Redis without LPOS (before 6.0.6) lets the job's status alone decide."""
    connection = redis.Redis.from_url(lpos_denied_url)
    async_connection = connect_async_redis(lpos_denied_url)
    queue = JobQueue(connection, settings, async_connection=async_connection)
    try:
        (first,) = await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
        data_before = clean_redis.hget(Job.key_for(first.job_id), "data")
        with pytest.raises(DependencyUnavailableError, match="run this command"):
            await queue.enqueue_pages([PAGE], delivery_id=None, meta=None)
    finally:
        await async_connection.aclose()
        connection.close()
    assert clean_redis.hget(Job.key_for(first.job_id), "data") == data_before


async def test_without_an_async_connection_the_same_jobs_are_queued_from_a_thread(
    clean_redis: redis.Redis, settings: Settings
) -> None:
    queue = JobQueue(clean_redis, settings)
    (first,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)
    (again,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)

    assert not first.deduplicated
    assert again.deduplicated
    assert first.job_id == queue.enqueue_index(PAGE, delivery_id="delivery-1").job_id
    assert clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}") == 1


async def test_redis_away_is_a_dependency_error(settings: Settings) -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    queue = JobQueue(redis.Redis(host="127.0.0.1", port=1), settings, async_connection=unreachable)
    with pytest.raises(DependencyUnavailableError) as raised:
        await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)
    assert raised.value.dependency == "redis"
    await unreachable.aclose()


@pytest.mark.parametrize("with_async_connection", [True, False])
async def test_a_rate_charge_is_counted_with_the_jobs_and_a_refused_one_queues_nothing(
    queue: JobQueue, clean_redis: redis.Redis, settings: Settings, with_async_connection: bool
) -> None:
    if not with_async_connection:
        queue = JobQueue(clean_redis, settings)
    other = PageDocument(url="https://queue.example/b", markdown="# B")
    limit = RateLimit(per_minute=1, burst=2)
    charges = [RateCharge(bucket_key("webhook", "addr:192.0.2.1"), limit) for _ in range(3)]

    first = await queue.enqueue_pages([PAGE, other], delivery_id="delivery-1", meta=META, charge=charges[0])
    replay = await queue.enqueue_pages([PAGE, other], delivery_id="delivery-1", meta=META, charge=charges[1])
    with pytest.raises(RateLimitedError) as refused:
        await queue.enqueue_pages([PAGE], delivery_id="delivery-2", meta=META, charge=charges[2])

    assert [job.deduplicated for job in first] == [False, False]
    assert [job.deduplicated for job in replay] == [True, True]  # a replay is charged all the same
    assert [(c.decision.allowed, c.decision.remaining) for c in charges if c.decision] == [
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert refused.value.decision is charges[2].decision
    assert refused.value.decision.retry_after_seconds >= 1
    assert clean_redis.llen(f"rq:queue:{QUEUE_INDEXING}") == 2
    refused_job = queue.enqueue_index(PAGE, delivery_id="delivery-2")  # its id, now queued without a charge
    assert not refused_job.deduplicated  # nothing of the refused delivery had been written


async def test_deliveries_that_meet_go_in_one_script_run_each_with_its_own_answer(
    clean_redis: redis.Redis, settings: Settings, redis_url: str
) -> None:
    """Deliveries that arrive while a script run is out go together in the next: each is still charged to its
    own sender, a refused one writes nothing, and the others are queued in order, as RQ would queue them."""
    connection = connect_async_redis(redis_url)
    queue = JobQueue(clean_redis, settings, async_connection=connection)
    clean_redis.config_resetstat()
    limit = RateLimit(per_minute=1, burst=1)
    pages = [PageDocument(url=f"https://queue.example/{i}", markdown=f"# {i}") for i in range(4)]
    pages.append(pages[3])
    senders = ["192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3", "192.0.2.4"]
    deliveries = ["d-0", "d-1", "d-2", "d-3", "d-3"]  # the last one replays the fourth

    answers = await asyncio.gather(
        *(
            queue.enqueue_pages(
                [page],
                delivery_id=delivery,
                meta=META,
                charge=RateCharge(bucket_key("webhook", sender), limit),
            )
            for page, delivery, sender in zip(pages, deliveries, senders, strict=True)
        ),
        return_exceptions=True,
    )
    await queue.aclose()
    await connection.aclose()

    first, second, refused, fourth, replay = answers
    assert isinstance(refused, RateLimitedError)  # 192.0.2.1's second delivery, over its burst of one
    assert isinstance(first, list)
    assert isinstance(second, list)
    assert isinstance(fourth, list)
    assert isinstance(replay, list)
    assert [job.deduplicated for answer in (first, second, fourth, replay) for job in answer] == [
        False,
        False,
        False,
        True,
    ]
    assert replay[0].job_id == fourth[0].job_id
    # The first went alone (nothing was out); the other four came while it was, and went in one run.
    evalsha = clean_redis.info("commandstats")["cmdstat_evalsha"]
    assert evalsha["calls"] - evalsha["failed_calls"] == 2
    queued = clean_redis.lrange(f"rq:queue:{QUEUE_INDEXING}", 0, -1)
    assert queued == [answer[0].job_id.encode() for answer in (first, second, fourth)]
    assert clean_redis.smembers("rq:queues") == {f"rq:queue:{QUEUE_INDEXING}".encode()}
    for answer in (first, second, fourth):
        stored = clean_redis.hgetall(Job.key_for(answer[0].job_id))
        assert stored[b"status"] == b"queued"
    assert not queue.enqueue_index(pages[2], delivery_id="d-2").deduplicated  # nothing of it was written


async def test_the_script_runs_connection_comes_back_after_redis_drops_it(
    queue: JobQueue, clean_redis: redis.Redis
) -> None:
    """The script runs keep one connection; when Redis drops it (a restart, a failover, `CLIENT KILL`) the
    next delivery is queued all the same, on a new one."""
    (first,) = await queue.enqueue_pages([PAGE], delivery_id="delivery-1", meta=META)
    database = clean_redis.connection_pool.connection_kwargs.get("db", 0)
    runners = [c for c in clean_redis.client_list() if c["cmd"] == "evalsha" and int(c["db"]) == database]
    assert runners
    for client in runners:
        clean_redis.client_kill_filter(_id=client["id"])

    other = PageDocument(url="https://queue.example/after-the-drop", markdown="# After")
    (second,) = await queue.enqueue_pages([other], delivery_id="delivery-2", meta=META)

    assert not first.deduplicated
    assert not second.deduplicated
    assert clean_redis.lrange(f"rq:queue:{QUEUE_INDEXING}", 0, -1) == [
        first.job_id.encode(),
        second.job_id.encode(),
    ]
    await queue.aclose()
