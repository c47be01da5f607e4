"""New work is refused before Redis reaches its maxmemory, against a Redis of its own with a small maxmemory
(the shared test Redis has none): at the limit Redis would refuse the workers' writes too."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.queue import JobQueue
from crawldex.adapters.redis_memory import RedisFullError, RedisMemoryGauge
from crawldex.changes import open_change
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE, Settings
from crawldex.jobs import JobLoop, WorkerRuntime, install_runtime
from crawldex.models import PageDocument
from crawldex.services import RescrapeServices
from crawldex.telemetry.queue_metrics import QueueCollector
from crawldex.worker import CrawldexWorker, worker_name
from ingest_api.app import create_app
from tests.e2e.conftest import free_port
from tests.integration.test_api import page_body, post_webhook
from tests.pages import serve_pages

MAXMEMORY = 16 * 2**20


@pytest.fixture
def small_redis() -> Iterator[str]:
    """A redis-server of this test's own, with a 16 MiB maxmemory and the noeviction policy."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server runs on these machines"
    port = free_port()
    command = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
    command += ["--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def fill(url: str, share: float) -> None:
    """Take Redis's used memory to at least ``share`` of its maxmemory, in keys of 256 KiB (one large value
    would count twice while Redis reads it)."""
    client = redis.Redis.from_url(url)
    number = 0
    while int(client.info("memory")["used_memory"]) < share * MAXMEMORY:
        try:
            client.set(f"filler:{number}", b"x" * 256 * 1024)
        except redis.OutOfMemoryError:  # at its maxmemory: as full as it gets
            break
        number += 1
    client.close()


def drain(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.delete(*client.keys("filler:*"))
    client.close()


def mark_busy(worker: CrawldexWorker) -> None:
    """The writes with which a worker starts a batch: its state and its heartbeat, in one transaction."""
    with worker.connection.pipeline() as pipeline:
        worker.set_state(WorkerStatus.BUSY, pipeline=pipeline)
        worker.heartbeat(60, pipeline=pipeline)
        pipeline.execute()


def user_without_info(url: str) -> str:
    """``url`` as a Redis user that may run every command but INFO (an ACL as some managed Redis set)."""
    admin = redis.Redis.from_url(url)
    admin.acl_setuser(
        "crawldex-no-info", enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-info"]
    )
    admin.close()
    return url.replace("redis://", "redis://crawldex-no-info@")


def page(number: int) -> PageDocument:
    return PageDocument(
        url=f"https://full.example/{number}", markdown=f"# Page {number}\n\nWords of page {number}."
    )


def test_new_work_is_refused_while_redis_is_nearly_full_and_taken_again_once_it_has_room(
    small_redis: str,
) -> None:
    settings = Settings(redis_url=small_redis, redis_memory_check_seconds=0.001)
    connection = redis.Redis.from_url(small_redis)
    queue = JobQueue(connection, settings)
    queue.enqueue_index(page(0))

    fill(small_redis, 0.95)
    time.sleep(0.01)
    with pytest.raises(RedisFullError, match="of its maxmemory"):
        queue.enqueue_index(page(1))
    assert connection.llen(f"rq:queue:{QUEUE_INDEXING}") == 1
    # The room left is the workers': one marks itself busy, as it does when it takes a batch (a transaction
    # of writes, as taking and finishing jobs are)...
    jobs = Queue(QUEUE_INDEXING, connection=connection, serializer=JSONSerializer)
    worker = CrawldexWorker([jobs], connection=connection, name=worker_name("full"))
    mark_busy(worker)
    assert connection.hget(worker.key, "state") == b"busy"
    # ...which Redis past its maxmemory refuses: what refusing new work before it keeps from happening.
    connection.config_set("maxmemory", int(connection.info("memory")["used_memory"]) - 2**20)
    with pytest.raises(redis.OutOfMemoryError):
        mark_busy(CrawldexWorker([jobs], connection=connection, name=worker_name("late")))
    connection.config_set("maxmemory", MAXMEMORY)

    drain(small_redis)
    time.sleep(0.01)
    assert not queue.enqueue_index(page(1)).deduplicated
    assert connection.llen(f"rq:queue:{QUEUE_INDEXING}") == 2
    connection.close()


def test_redis_is_read_at_most_once_an_interval(small_redis: str) -> None:
    settings = Settings(redis_url=small_redis, redis_memory_check_seconds=3600)
    connection = redis.Redis.from_url(small_redis)
    queue = JobQueue(connection, settings)
    queue.enqueue_index(page(0))  # the first enqueue reads: room
    fill(small_redis, 0.95)
    before = connection.info("commandstats")["cmdstat_info"]["calls"]
    for number in range(1, 6):
        queue.enqueue_index(page(number))  # on the reading of less than an hour ago: room, as it said
    after = connection.info("commandstats")["cmdstat_info"]["calls"]
    assert after - before == 1  # the INFO that read `before`; none by the queue
    assert connection.llen(f"rq:queue:{QUEUE_INDEXING}") == 6
    connection.close()


def test_a_redis_without_a_maxmemory_is_named_once(
    clean_redis: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared test Redis has none, as a Redis deployed without one: nothing to refuse by, said once."""
    assert clean_redis.config_get("maxmemory")["maxmemory"] == "0"
    queue = JobQueue(clean_redis, Settings(redis_url=redis_url, redis_memory_check_seconds=0.001))
    for number in range(3):
        queue.enqueue_index(page(number))
        time.sleep(0.01)
    assert caplog.text.count("redis has no maxmemory") == 1


def test_a_redis_that_refuses_info_is_never_held_back(
    small_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = user_without_info(small_redis)
    fill(small_redis, 0.95)
    connection = redis.Redis.from_url(url)
    queue = JobQueue(connection, Settings(redis_url=url, redis_memory_check_seconds=0.001))
    queue.enqueue_index(page(0))
    assert connection.llen(f"rq:queue:{QUEUE_INDEXING}") == 1
    assert "refused INFO" in caplog.text
    connection.close()


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_api_never_refuses_on_an_old_reading_nor_accepts_on_none(small_redis: str) -> None:
    connection = redis.Redis.from_url(small_redis)
    async_connection = aioredis.Redis.from_url(small_redis)
    clock = Clock()
    gauge = RedisMemoryGauge(connection, async_connection, refuse_ratio=0.9, interval_seconds=5, clock=clock)
    fill(small_redis, 0.95)
    with pytest.raises(RedisFullError):  # the first request waits for the first reading
        await gauge.check_async()
    drain(small_redis)
    clock.now += 3600  # an hour without a request: the next one reads before it decides
    await gauge.check_async()
    fill(small_redis, 0.95)
    clock.now += 5
    await gauge.check_async()  # room when it came: let in, and Redis read in the background for the next
    await asyncio.sleep(0.2)
    with pytest.raises(RedisFullError):
        await gauge.check_async()
    await async_connection.aclose()
    connection.close()


def test_each_refusal_raises_an_error_of_its_own(small_redis: str) -> None:
    """One error raised again and again would grow a traceback that keeps every refused request's frames."""
    connection = redis.Redis.from_url(small_redis)
    gauge = RedisMemoryGauge(connection, None, refuse_ratio=0.9, interval_seconds=3600)
    fill(small_redis, 0.95)
    refused = []
    for _ in range(2):
        with pytest.raises(RedisFullError) as caught:
            gauge.check()
        refused.append(caught.value)
    assert refused[0] is not refused[1]
    connection.close()


def test_a_busy_redis_keeps_the_check(small_redis: str) -> None:
    """INFO refused for a moment (BUSY: a long script; MASTERDOWN, TRYAGAIN in a failover) is read again at
    the next interval; only a Redis that may not run INFO at all is no longer checked."""
    connection = redis.Redis.from_url(small_redis)
    connection.config_set("busy-reply-threshold", 100)
    clock = Clock()
    gauge = RedisMemoryGauge(connection, None, refuse_ratio=0.9, interval_seconds=5, clock=clock)
    gauge.check()
    fill(small_redis, 0.95)
    busy = threading.Thread(
        target=redis.Redis.from_url(small_redis).eval,
        args=("local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 2 do end", 0),
    )
    busy.start()
    time.sleep(0.5)
    clock.now += 5
    with pytest.raises(redis.ResponseError, match="BUSY"):
        connection.ping()
    gauge.check()  # BUSY: the last reading (room) stands
    busy.join()
    clock.now += 5
    with pytest.raises(RedisFullError):
        gauge.check()
    connection.close()


def scraped(connection: redis.Redis) -> dict[str, float]:
    """The queue collector's series as a scrape of /metrics reads them: name -> value (the indexing queue's)."""
    return {
        sample.name: sample.value
        for family in QueueCollector(connection, [QUEUE_INDEXING]).collect()
        for sample in family.samples
    }


def test_the_metrics_say_how_full_redis_is(small_redis: str) -> None:
    connection = redis.Redis.from_url(small_redis)
    before = scraped(connection)
    assert before["crawldex_redis_maxmemory_bytes"] == MAXMEMORY
    assert 0 < before["crawldex_redis_memory_used_bytes"] < 0.5 * MAXMEMORY
    fill(small_redis, 0.85)
    # A little less than `fill` read: the query buffer of its last write is freed after it.
    assert scraped(connection)["crawldex_redis_memory_used_bytes"] >= 0.8 * MAXMEMORY
    connection.close()


def test_a_redis_that_refuses_info_still_reports_its_queues(small_redis: str) -> None:
    connection = redis.Redis.from_url(user_without_info(small_redis))
    series = scraped(connection)
    assert series["crawldex_queue_depth"] == 0
    assert "crawldex_redis_memory_used_bytes" not in series
    assert "crawldex_redis_maxmemory_bytes" not in series
    connection.close()


@pytest.mark.parametrize("gone", [False, True], ids=["changed", "gone"])
def test_a_rescrape_hands_its_page_on_while_redis_is_nearly_full(
    small_redis: str, settings: Settings, gone: bool
) -> None:
    """A change accepted while Redis had room is fetched and handed to the indexing queue (or its removal)
    however full Redis is meanwhile: refused, the fetched page would be lost, and the event would fail."""
    configured = settings.model_copy(
        update={
            "redis_url": small_redis,
            "redis_memory_check_seconds": 0.001,
            "fetch_allowed_hosts": ["127.0.0.1"],
            "rescrape_job_retries": 0,
        }
    )
    loop = JobLoop()
    runtime = WorkerRuntime(loop, rescrape=loop.run(RescrapeServices.start(configured)))
    install_runtime(runtime)
    connection = redis.Redis.from_url(small_redis)
    try:
        with serve_pages() as site:
            url = site.base_url + "/kettle"
            if not gone:
                site.set("/kettle", site.html("Kettle", "<p>The copper kettle whistles.</p>"))
            services = runtime.rescrape
            opened = loop.run(
                open_change(
                    services.change_events,
                    services.queue,
                    source="changedetection",
                    url=url,
                    canonical_url=url,
                    watch_uuid=None,
                    detected_at=None,
                    removed=False,
                )
            )
            fill(small_redis, 0.95)
            time.sleep(0.01)
            with pytest.raises(RedisFullError):  # new work is refused...
                services.queue.enqueue_index(page(0))
            rescrape = Queue(QUEUE_RESCRAPE, connection=connection, serializer=JSONSerializer)
            worker = CrawldexWorker([rescrape], connection=connection, name=worker_name("full"))
            worker.work(burst=True, with_scheduler=False)
            # ...but the rescrape's page goes on to be indexed (or removed).
            event = loop.run(services.change_events.get(opened.event.id))
            assert event is not None
            assert (event.status, event.error) == ("indexing", None)
            assert connection.llen(f"rq:queue:{QUEUE_INDEXING}") == 1
    finally:
        install_runtime(None)
        runtime.close()
        connection.close()


def test_sweeps_and_reconciliations_are_queued_while_redis_is_nearly_full(small_redis: str) -> None:
    """They carry no page, and finish what was accepted: a change event's lost rescrape, a crawl's check for
    the pages whose webhooks were refused. A new change's rescrape is refused."""
    connection = redis.Redis.from_url(small_redis)
    queue = JobQueue(connection, Settings(redis_url=small_redis, redis_memory_check_seconds=0.001))
    fill(small_redis, 0.95)
    time.sleep(0.01)
    queue.rerun_rescrape(1, "https://full.example/lost")
    queue.enqueue_reconcile("crawl-1", "crawl")
    with pytest.raises(RedisFullError):
        queue.enqueue_rescrape(2, "https://full.example/new")
    assert connection.llen(f"rq:queue:{QUEUE_RESCRAPE}") == 2
    connection.close()


def statuses_until(client: TestClient, wanted: int, url: str) -> list[int]:
    """POST deliveries of one page until one answers ``wanted`` (the API reads Redis's memory in the
    background, so the answer changes a request or two after Redis does); the statuses, in order."""
    statuses: list[int] = []
    deadline = time.monotonic() + 10
    while not statuses or statuses[-1] != wanted:
        assert time.monotonic() < deadline, statuses
        response = post_webhook(client, page_body(url, "# Page\n\nA page while redis fills and drains."))
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "5"
        time.sleep(0.01)
    return statuses


def test_a_webhook_gets_503_and_retry_after_while_redis_is_nearly_full(
    small_redis: str, settings: Settings, embedder: LocalModelEmbedder
) -> None:
    app = create_app(
        settings.model_copy(update={"redis_url": small_redis, "redis_memory_check_seconds": 0.001}),
        embedder=embedder,
    )
    with TestClient(app) as client:
        assert statuses_until(client, 202, "https://full.example/a") == [202]
        fill(small_redis, 0.95)
        refused = statuses_until(client, 503, "https://full.example/b")
        assert len(refused) <= 3  # accepted at most until the next reading
        drain(small_redis)
        assert statuses_until(client, 202, "https://full.example/b")[-1] == 202
