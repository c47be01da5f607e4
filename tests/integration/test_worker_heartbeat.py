"""The index-worker's job lease (real RQ and Redis): renewed every heartbeat while a job runs, by one
heartbeat thread that serves every job of the worker and stops with it."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from rq import Queue, get_current_job
from rq.serializers import JSONSerializer

from crawldex.worker import CrawldexWorker, worker_name

QUEUE = "heartbeat-test"
RENEWALS = 2
PATIENCE = 60.0  # seconds a job waits for its renewals before it gives up


def wait_for_lease_renewals() -> dict[str, Any]:
    """A job that runs until its lease in the started registry has been renewed RENEWALS times."""
    job = get_current_job()
    assert job is not None
    registry = job.started_job_registry
    expiries: list[float] = []
    deadline = time.monotonic() + PATIENCE
    while len(expiries) <= RENEWALS and time.monotonic() < deadline:
        for member, expiry in registry.connection.zrange(registry.key, 0, -1, withscores=True):
            if member.decode().startswith(f"{job.id}:") and (not expiries or expiry > expiries[-1]):
                expiries.append(expiry)
        time.sleep(0.05)
    beating = [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]
    return {"renewals": len(expiries) - 1, "threads": [t.ident for t in beating]}


def test_the_lease_is_renewed_while_jobs_run_by_one_thread(clean_redis: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=clean_redis, serializer=JSONSerializer)
    jobs = [queue.enqueue(wait_for_lease_renewals, job_timeout=600) for _ in range(2)]
    worker = CrawldexWorker(
        [queue], connection=clean_redis, name=worker_name("heartbeat-test"), heartbeat_seconds=1
    )
    worker.work(burst=True, with_scheduler=False)

    results: list[dict[str, Any]] = []
    for job in jobs:
        job.refresh()  # type: ignore[no-untyped-call]
        assert job.get_status() == "finished", job.exc_info
        result = job.return_value()
        assert isinstance(result, dict)
        results.append(result)
    assert [r["renewals"] for r in results] == [RENEWALS, RENEWALS]
    threads = [r["threads"] for r in results]
    assert len(threads[0]) == 1
    assert threads[0] == threads[1]  # the same thread beat for both jobs
    assert not any(t.name.startswith("heartbeat-") for t in threading.enumerate())  # stopped with the worker
    assert queue.started_job_registry.count == 0
