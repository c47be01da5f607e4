"""New work is refused before Redis reaches its maxmemory, against a Redis of its own with a small maxmemory
(the shared test Redis has none): at the limit Redis would refuse the workers' writes too."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from crawldex.adapters.local_model import LocalModelEmbedder
from crawldex.adapters.queue import JobQueue
from crawldex.adapters.redis_memory import RedisFullError
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.models import PageDocument
from crawldex.telemetry.queue_metrics import QueueCollector
from crawldex.worker import CrawldexWorker, worker_name
from ingest_api.app import create_app
from tests.e2e.conftest import free_port
from tests.integration.test_api import page_body, post_webhook

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
