"""A worker killed mid-job (SIGKILL: no handler runs, as in an OOM-kill) and a job past its timeout.

Real index-worker processes on real Redis and PostgreSQL with the in-process model. With the embedded store
only one worker process may open it, so the second worker starts on the first one's store after the kill,
as a replacement pod would on a Qdrant server.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from crawldex.adapters.queue import JobQueue
from crawldex.config import QUEUE_INDEXING, Settings
from crawldex.models import PageDocument
from tests.e2e.conftest import Deployment
from tests.e2e.test_processes import long_page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
RECOVERY = {"CRAWLDEX_WORKER_HEARTBEAT_SECONDS": "1", "CRAWLDEX_WORKER_MAINTENANCE_SECONDS": "5"}


def queue_of(deployment: Deployment, **settings: Any) -> JobQueue:
    env = deployment.base_env
    configured = Settings(
        redis_url=env["CRAWLDEX_REDIS_URL"], database_url=env["CRAWLDEX_DATABASE_URL"], **settings
    )
    return JobQueue(redis.Redis.from_url(configured.redis_url), configured)


def wait_for_status(job: Job, statuses: set[str], deployment: Deployment, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.get_status(refresh=True)
        if status in statuses:
            return status.value
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}:\n{p.output()[-2000:]}" for p in deployment.processes)
    raise AssertionError(f"job {job.id} still {job.get_status()} after {timeout}s\n{logs}")


def test_the_job_of_a_killed_worker_runs_again_on_another(
    deployment: Deployment, clean_redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(deployment.tmp / "store")
    queue = queue_of(deployment, index_job_retries=2, index_job_retry_intervals=[1])
    page = PageDocument(url="https://e2e.example/killed", markdown=long_page(40))
    job_id = queue.enqueue_index(page, delivery_id="killed-1").job_id
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)

    first = deployment.start_worker("worker-1", CRAWLDEX_DATA_DIR=store, **RECOVERY)
    assert wait_for_status(job, {"started", "finished"}, deployment) == "started", "make the page longer"
    first.popen.send_signal(signal.SIGKILL)
    assert first.popen.wait(30) == -signal.SIGKILL
    killed_at = time.monotonic()

    second = deployment.start_worker("worker-2", CRAWLDEX_DATA_DIR=store, **RECOVERY)
    assert wait_for_status(job, {"finished", "failed"}, deployment) == "finished", second.output()[-3000:]
    recovered_in = time.monotonic() - killed_at
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.retries_left == 1, "the abandoned run used one retry"
    assert f".{second.pid}." in (job.worker_name or "")
    result = job.return_value()
    assert result is not None
    assert result["status"] == "indexed"
    assert result["chunk_count"] > 100
    with capsys.disabled():
        print(f"\nkilled worker's job finished on the second worker {recovered_in:.1f} s after the kill")


def test_a_job_past_its_timeout_fails_is_retried_then_kept_failed_with_its_error(
    deployment: Deployment, clean_redis: Any
) -> None:
    settings = {"index_job_timeout_seconds": 1, "index_job_retries": 1, "index_job_retry_intervals": [1]}
    queue = queue_of(deployment, **settings)
    page = PageDocument(url="https://e2e.example/too-slow", markdown=long_page(400))
    job_id = queue.enqueue_index(page, delivery_id="too-slow-1").job_id
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)

    deployment.start_worker(
        "worker", CRAWLDEX_INDEX_JOB_TIMEOUT_SECONDS="1", CRAWLDEX_INDEX_JOB_RETRIES="1",
        CRAWLDEX_INDEX_JOB_RETRY_INTERVALS="[1]", **RECOVERY,
    )  # fmt: skip
    assert wait_for_status(job, {"failed"}, deployment) == "failed"
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.retries_left == 0, "timed out twice: the first try and its one retry"
    assert job_id in FailedJobRegistry(QUEUE_INDEXING, connection=queue.connection).get_job_ids()
    error = job.latest_result()
    assert error is not None
    assert "JobTimeoutException" in (error.exc_string or "")
