"""What an operator sees and does on the RQ queues: counts, workers, failed jobs and their re-run.

Counts are read-only (LLEN, ZCARD, ZCOUNT), like the Prometheus queue gauges: RQ's own ``count`` helpers
clean registries up as they count, and looking must not change what is looked at.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from crawldex.adapters.queue import INDEX_JOB, REMOVE_JOB, RESCRAPE_JOB
from crawldex.config import QUEUE_INDEXING, QUEUE_RESCRAPE
from crawldex.errors import DependencyUnavailableError

CRAWLDEX_QUEUES = (QUEUE_INDEXING, QUEUE_RESCRAPE)
MISSING = "missing"  # the job id names no job (never queued, or expired after its result TTL)


@dataclass(frozen=True)
class QueueCounts:
    queue: str
    queued: int  # waiting for a worker
    started: int  # running, with a live lease
    abandoned: int  # started, but the worker stopped renewing its lease: a worker's maintenance re-runs it
    scheduled: int  # waiting for a retry interval
    failed: int  # out of tries, kept for the failure TTL
    finished: int  # done, kept for the result TTL


@dataclass(frozen=True)
class WorkerView:
    name: str
    queues: list[str]
    state: str  # idle, busy, suspended, ...
    current_job_id: str | None
    last_heartbeat: datetime | None
    started_at: datetime | None
    successful_jobs: int
    failed_jobs: int


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    queue: str
    function: str
    description: str
    change_event_id: int | None
    is_rescrape: bool
    ended_at: datetime | None
    error: str | None  # the last line of the exception


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str  # RQ's status (queued, started, scheduled, finished, failed, ...) or `missing`
    result: Any
    error: str | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _change_event_id(job: Job) -> int | None:
    """The change event a crawldex job closes: rescrape_page(event), index_page(page, event),
    remove_page(url, event, seen_gone)."""
    args = list(job.args or ())
    position = 0 if job.func_name == RESCRAPE_JOB else 1
    if job.func_name not in (INDEX_JOB, REMOVE_JOB, RESCRAPE_JOB) or len(args) <= position:
        return None
    value = args[position]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class QueueAdmin:
    def __init__(self, connection: redis.Redis, queues: Sequence[str] = CRAWLDEX_QUEUES) -> None:
        self.connection = connection
        self.queues = list(queues)

    def _unavailable(self, exc: redis.RedisError) -> DependencyUnavailableError:
        return DependencyUnavailableError("redis", f"{type(exc).__name__}: {exc}")

    def counts(self, queue: str) -> QueueCounts:
        now = time.time()
        try:
            pipe = self.connection.pipeline(transaction=False)
            pipe.llen(f"rq:queue:{queue}")
            pipe.zcount(f"rq:wip:{queue}", now, "+inf")
            pipe.zcount(f"rq:wip:{queue}", "-inf", f"({now}")
            pipe.zcard(f"rq:scheduled:{queue}")
            # Registry entries past their score have expired and wait for RQ's clean-up: not counted.
            pipe.zcount(f"rq:failed:{queue}", now, "+inf")
            pipe.zcount(f"rq:finished:{queue}", now, "+inf")
            queued, started, abandoned, scheduled, failed, finished = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return QueueCounts(queue, queued, started, abandoned, scheduled, failed, finished)

    def workers(self) -> list[WorkerView]:
        """The live workers of our queues (a worker whose key has expired is dead and left out)."""
        try:
            found = Worker.all(connection=self.connection, serializer=JSONSerializer)
            views = []
            for worker in found:
                queues = worker.queue_names()
                if not set(queues) & set(self.queues):
                    continue
                views.append(
                    WorkerView(
                        name=worker.name,
                        queues=queues,
                        state=_text(worker.get_state()),
                        current_job_id=worker.get_current_job_id(),
                        last_heartbeat=worker.last_heartbeat,
                        started_at=worker.birth_date,
                        successful_jobs=worker.successful_job_count,
                        failed_jobs=worker.failed_job_count,
                    )
                )
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return sorted(views, key=lambda view: view.name)

    def failed_job_ids(self, queue: str) -> list[str]:
        """Failed jobs of ``queue``, oldest failure first."""
        try:
            entries = self.connection.zrangebyscore(f"rq:failed:{queue}", time.time(), "+inf")
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return [_text(entry) for entry in entries if isinstance(entry, bytes | str)]

    def failed_job(self, job_id: str) -> FailedJob | None:
        """The job if it is in the failed registry of one of our queues, else None."""
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            if job.origin not in self.queues or job_id not in self._registry(job.origin):
                return None
            result = job.latest_result()
        except NoSuchJobError:
            return None
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return FailedJob(
            job_id=job.id,
            queue=job.origin,
            function=job.func_name or "",
            description=job.description or job.func_name or job.id,
            change_event_id=_change_event_id(job),
            is_rescrape=job.func_name == RESCRAPE_JOB,
            ended_at=job.ended_at,
            error=_last_line(result.exc_string if result is not None else None),
        )

    def requeue(self, job_id: str, *, retries: int, retry_intervals: Sequence[int]) -> bool:
        """Put a failed job back on its queue with ``retries`` tries again; False if it is no longer failed.

        Its last failure left it no retries, and RQ's requeue keeps that: the job would fail for good at
        its first error. Its own retry waits (jittered when it was queued) are kept; ``retry_intervals``
        only fills them in for a job that was queued without retries.
        """
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            job.retries_left = retries if retries > 0 else None
            if retries > 0 and not job.retry_intervals:
                job.retry_intervals = list(retry_intervals)
            self._registry(job.origin).requeue(job)
        except (NoSuchJobError, InvalidJobOperation):
            return False  # gone, or someone else requeued (or deleted) it meanwhile
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return True

    def job_states(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The state of each job, with its result (finished) or last error line (failed)."""
        ids = list(dict.fromkeys(job_ids))
        states: dict[str, JobState] = {}
        try:
            jobs = Job.fetch_many(ids, connection=self.connection, serializer=JSONSerializer)
            for job_id, job in zip(ids, jobs, strict=True):
                if job is None:
                    states[job_id] = JobState(job_id, MISSING, None, None)
                    continue
                status = job.get_status(refresh=False)
                status_text = str(status.value) if status is not None else MISSING
                result, error = None, None
                if status_text in ("finished", "failed"):
                    latest = job.latest_result()
                    if latest is not None:
                        result = latest.return_value
                        error = _last_line(latest.exc_string)
                states[job_id] = JobState(job_id, status_text, result, error)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return states

    def _registry(self, queue: str) -> FailedJobRegistry:
        return FailedJobRegistry(
            queue=Queue(queue, connection=self.connection, serializer=JSONSerializer),
            serializer=JSONSerializer,
        )
